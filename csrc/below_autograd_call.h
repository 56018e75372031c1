// A dgm_fast op called from Python through torch's dispatcher, entered below
// the Autograd key, with the Python arguments converted by the op's schema
// here. FusedOp (dgm_fast/_op.py) uses it for calls that need no autograd:
// the same dispatcher, kernels, version counters and dispatch modes as
// OpOverload, without torch's generic per-argument conversion from Python
// (about 3 us of a tiny langevin_step call's 5). Tensor subclasses and torch
// function modes are left to OpOverload, in Python.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include <string>
#include <vector>

namespace dgm_fast {

// hidden, as pybind11 is: a class exported past its pybind11 base draws -Wattributes
class __attribute__((visibility("hidden"))) BelowAutogradCall {
 public:
  // `name`: "dgm_fast::<op>"; `overload`: "" or e.g. "backend".
  BelowAutogradCall(const std::string& name, const std::string& overload)
      : op_(c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), overload.c_str())) {
    const c10::FunctionSchema& schema = op_.schema();
    for (const c10::Argument& arg : schema.arguments()) {
      kinds_.push_back(kind_of(*arg.type(), arg.name()));
    }
    for (const c10::Argument& ret : schema.returns()) {
      const Kind kind = kind_of(*ret.type(), "return");
      if (kind != Kind::kTensor && kind != Kind::kTensorList) {
        throw std::invalid_argument(name + ": only Tensor and Tensor[] returns are supported, got " +
                                    ret.type()->str());
      }
    }
  }

  py::object operator()(const py::args& args) const {
    HANDLE_TH_ERRORS
    const c10::FunctionSchema& schema = op_.schema();
    if (args.size() != kinds_.size()) {
      throw py::type_error(schema.name() + " takes " + std::to_string(kinds_.size()) +
                           " arguments, got " + std::to_string(args.size()));
    }
    torch::jit::Stack stack;
    stack.reserve(kinds_.size());
    for (size_t i = 0; i < kinds_.size(); ++i) {
      stack.push_back(to_ivalue(args[i].ptr(), kinds_[i], schema.arguments()[i].name()));
    }
    {
      const py::gil_scoped_release no_gil;  // as torch's own op calls do
      const at::AutoDispatchBelowAutograd below_autograd;
      op_.callBoxed(&stack);
    }
    if (stack.empty()) return py::none();
    if (stack.size() == 1) return returned(stack[0]);
    py::tuple out(stack.size());
    for (size_t i = 0; i < stack.size(); ++i) out[i] = returned(stack[i]);
    return out;
    END_HANDLE_TH_ERRORS_PYBIND
  }

 private:
  enum class Kind { kTensor, kOptionalTensor, kTensorList, kFloat, kInt, kBool, kString };

  static Kind kind_of(const c10::Type& type, const std::string& name) {
    switch (type.kind()) {
      case c10::TypeKind::TensorType: return Kind::kTensor;
      case c10::TypeKind::FloatType: return Kind::kFloat;
      case c10::TypeKind::IntType: return Kind::kInt;
      case c10::TypeKind::BoolType: return Kind::kBool;
      case c10::TypeKind::StringType: return Kind::kString;
      case c10::TypeKind::ListType:
        if (type.expectRef<c10::ListType>().getElementType()->kind() == c10::TypeKind::TensorType) {
          return Kind::kTensorList;
        }
        break;
      case c10::TypeKind::OptionalType:
        if (type.expectRef<c10::OptionalType>().getElementType()->kind() ==
            c10::TypeKind::TensorType) {
          return Kind::kOptionalTensor;
        }
        break;
      default: break;
    }
    throw std::invalid_argument("argument " + name + ": schema type " + type.str() +
                                " is not supported by BelowAutogradCall");
  }

  static c10::IValue to_ivalue(PyObject* obj, Kind kind, const std::string& name) {
    switch (kind) {
      case Kind::kOptionalTensor:
        if (obj == Py_None) return c10::IValue();
        [[fallthrough]];
      case Kind::kTensor:
        if (!THPVariable_Check(obj)) break;
        return THPVariable_Unpack(obj);
      case Kind::kTensorList: {
        if (!PyList_Check(obj) && !PyTuple_Check(obj)) break;
        const py::sequence items = py::reinterpret_borrow<py::sequence>(obj);
        c10::List<at::Tensor> list;
        list.reserve(items.size());
        for (const py::handle item : items) {
          if (!THPVariable_Check(item.ptr())) {
            throw py::type_error("argument " + name + " must hold only tensors, got " + Py_TYPE(item.ptr())->tp_name);
          }
          list.push_back(THPVariable_Unpack(item.ptr()));
        }
        return list;
      }
      case Kind::kFloat:
        if (PyFloat_Check(obj)) return PyFloat_AS_DOUBLE(obj);
        if (PyLong_Check(obj) && !PyBool_Check(obj)) {
          const double value = PyLong_AsDouble(obj);
          if (value == -1.0 && PyErr_Occurred()) throw py::error_already_set();  // beyond double
          return value;
        }
        break;
      case Kind::kInt:
        if (PyLong_Check(obj) && !PyBool_Check(obj)) {
          const long long value = PyLong_AsLongLong(obj);
          if (value == -1 && PyErr_Occurred()) throw py::error_already_set();  // out of int64
          return static_cast<int64_t>(value);
        }
        break;
      case Kind::kBool:
        if (PyBool_Check(obj)) return obj == Py_True;
        break;
      case Kind::kString:
        if (PyUnicode_Check(obj)) return std::string(py::str(obj));
        break;
    }
    throw py::type_error("argument " + name + " has the wrong type: " + Py_TYPE(obj)->tp_name);
  }

  static py::object returned(const c10::IValue& value) {
    if (value.isTensorList()) {
      py::list out;
      for (const at::Tensor& t : value.toTensorVector()) out.append(returned(t));
      return out;
    }
    return py::reinterpret_steal<py::object>(THPVariable_Wrap(value.toTensor()));
  }

  c10::OperatorHandle op_;
  std::vector<Kind> kinds_;
};

}  // namespace dgm_fast
