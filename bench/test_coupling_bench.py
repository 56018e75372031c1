"""dgm_fast's affine coupling op and coupling flow against plain PyTorch, torch.compile and the flow
libraries users pick today (FrEIA, normflows, nflows, zuko), all in the same run.

Measures only; correctness is asserted in tests/. The timing helper ``measure`` and the
``contender``/``backend`` parameters (dgm_fast per backend, eager, compiled) come from conftest.py;
the third-party libraries are the extra ``peer`` parameter of ``test_coupling_flow_peer``, and are
skipped, with the install command, where the bench extra is not installed. The flows themselves
are built in peers/coupling.py (same architecture and, where the library allows, the same weights).

* ``affine_coupling``: ``dgm_fast.affine_coupling(x2, s, t, scale="atan", clamp=2)`` against the
  eager formula and its torch.compile, at (batch, features) (256, 32) and (4096, 1024), forward and
  inverse (op ``affine_coupling_inverse``).
* ``coupling_flow_{forward,inverse,train}_h{hidden}``: latent 64, 4 blocks of two couplings (split
  32/32) and a random permutation, subnets 32 -> hidden -> hidden -> 64 (ReLU), atan soft clamp 2;
  hidden 64 and 256, batch 256 and 4096 (256 only with --bench-quick). ``forward`` is
  z -> (u, logdet) and ``inverse`` u -> (z, logdet), both under torch.no_grad; ``train`` is the NLL
  ``mean(-log N(u; 0, I) - logdet)`` and its backward to all parameters.
* ``gemm_flow_h{hidden}`` / ``gemm_flow_train_h{hidden}``: the yardstick, like ``copy`` is for
  bandwidth: ``torch.mm`` into preallocated outputs at exactly the flow's GEMM shapes (forward; or
  forward + grad-input + grad-weight for training), so a flow row's GFLOP/s (its ``flops`` / median)
  over its ``gemm_yardstick`` row's GFLOP/s is the fraction of the machine's measured GEMM
  throughput it reaches.

Each flow row records ``flops`` (GEMM flops of the pass: 2 per multiply-add, 3x forward for train),
``gemm_yardstick`` (the op of its yardstick row), ``hidden``, ``latent``, ``n_blocks``, ``scale``
(the log-scale function that contender computes), ``backend_op`` (the dgm_fast op whose backend a
dgm_fast row reports: ``coupling_flow``, the whole flow as one op) and, for peers, ``library`` (name
and version).

* ``glf_train_step``: one training step of Generative Latent Flow (``dgm_fast.models.glf.GLF``,
  objective "glf", eq. (3.3)) at the dissertation's MNIST setting, as ``train_glf`` runs it per batch:
  the InfoGAN auto-encoder of Table 3.6 at 28 px (1 channel, latent 20), a flow of 4 blocks (split
  10/10, subnets 10 -> 64 -> 64 -> 20, atan soft clamp 2) on the stop-gradient latents, MSE
  reconstruction, batch 256 (BatchNorm in training mode), then ``zero_grad``, ``backward`` and an
  Adam step (lr 1e-3, weight decay 2e-5 on the flow). The contenders share the auto-encoder (same
  seeded weights) and differ only in the flow: ``dgm_fast`` is ``dgm_fast.nn.CouplingFlow(20, 4, 64)``
  with the eager flow's weights, ``eager`` the plain-PyTorch flow of peers/coupling.py, ``compiled``
  torch.compile of the eager model's loss (auto-encoder and flow; backward and Adam step outside).
  ``glf_train_step_ae_only`` (eager and compiled) is the same step without the flow (reconstruction
  loss only, Adam over the auto-encoder), so a row's median minus it is the flow's share of the step.
  These rows record ``latent``, ``hidden``, ``n_blocks``, ``batch``, ``image_size``, ``channels``,
  ``recon``, ``objective``, ``flow_flops`` (the flow's GEMM flops, forward + backward; none for
  ae_only) and, for dgm_fast, ``backend_op``.
"""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

import dgm_fast
from dgm_fast._op import registered_ops
from peers.coupling import (ATAN_SCALE, PEER_PACKAGES, PEERS, EagerCouplingFlow, FlowConfig, PeerUnavailable,
                            build, soft_clamp)

DTYPE = torch.float32
LATENT = 64
N_BLOCKS = 4
HIDDENS = (64, 256)
CLAMP = 2.0
PASSES = ("forward", "inverse", "train")


def pytest_generate_tests(metafunc):
    # conftest.py's hook parametrizes numel, batch and contender; these are this module's own sizes
    quick = metafunc.config.getoption("--bench-quick")
    if "flow_batch" in metafunc.fixturenames:
        metafunc.parametrize("flow_batch", (256,) if quick else (256, 4096), ids=lambda b: f"batch={b}")
    if "hidden" in metafunc.fixturenames:
        metafunc.parametrize("hidden", HIDDENS, ids=lambda h: f"h={h}")
    if "coupling_shape" in metafunc.fixturenames:
        shapes = ((256, 32),) if quick else ((256, 32), (4096, 1024))
        metafunc.parametrize("coupling_shape", shapes, ids=lambda s: f"{s[0]}x{s[1]}")


def _randn(*shape, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=DTYPE).to(device)


# ---------------------------------------------------------------------------------------------------
# affine_coupling: the elementwise op alone


def eager_affine_coupling(x2, s, t):
    log_s = soft_clamp(s, CLAMP)
    return x2 * torch.exp(log_s) + t, log_s.sum(dim=1)


def eager_affine_coupling_inverse(y2, s, t):
    log_s = soft_clamp(s, CLAMP)
    return (y2 - t) * torch.exp(-log_s), -log_s.sum(dim=1)


compiled_affine_coupling = torch.compile(eager_affine_coupling, dynamic=False)
compiled_affine_coupling_inverse = torch.compile(eager_affine_coupling_inverse, dynamic=False)


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_affine_coupling(measure, bench_config, coupling_shape, inverse, contender, backend):
    if contender == "dgm_fast" and not hasattr(dgm_fast, "affine_coupling"):
        pytest.skip("dgm_fast.affine_coupling does not exist yet in this checkout")
    batch, features = coupling_shape
    x2, s, t = (_randn(batch, features, device=bench_config.device, seed=k) for k in range(3))
    fn = {
        "dgm_fast": lambda: dgm_fast.affine_coupling(x2, s, t, scale="atan", clamp=CLAMP, inverse=inverse),
        "eager": lambda: (eager_affine_coupling_inverse if inverse else eager_affine_coupling)(x2, s, t),
        "compiled": lambda: (compiled_affine_coupling_inverse if inverse else compiled_affine_coupling)(x2, s, t),
    }[contender]
    numel = batch * features
    # the minimum traffic: read x2, s, t; write y2 and one logdet per row
    measure(fn, op="affine_coupling_inverse" if inverse else "affine_coupling", contender=contender, size=numel,
            dtype=DTYPE, backend=backend, bytes=4 * x2.element_size() * numel + x2.element_size() * batch,
            batch=batch, features=features, scale="atan", clamp=CLAMP, backend_op="affine_coupling")


# ---------------------------------------------------------------------------------------------------
# the GEMM yardstick


def _yardstick_op(hidden: int, train: bool) -> str:
    return f"gemm_flow{'_train' if train else ''}_h{hidden}"


@pytest.mark.parametrize("train", [False, True], ids=["forward", "train"])
def test_gemm(measure, bench_config, flow_batch, hidden, train):
    """torch.mm at the flow's GEMM shapes into preallocated outputs: the machine's GEMM throughput there."""
    config = FlowConfig(dim=LATENT, n_blocks=N_BLOCKS, hidden=hidden)
    device = bench_config.device
    mms = []
    for k, (n_in, n_out) in enumerate(config.linear_shapes()):
        x = _randn(flow_batch, n_in, device=device, seed=3 * k)
        w = _randn(n_out, n_in, device=device, seed=3 * k + 1)
        mms.append((x, w.t(), torch.empty(flow_batch, n_out, dtype=DTYPE, device=device)))  # x @ W^T (nn.Linear)
        if train:
            gy = _randn(flow_batch, n_out, device=device, seed=3 * k + 2)
            mms.append((gy, w, torch.empty(flow_batch, n_in, dtype=DTYPE, device=device)))  # grad of x
            mms.append((gy.t(), x, torch.empty(n_out, n_in, dtype=DTYPE, device=device)))  # grad of W

    def run():
        for a, b, out in mms:
            torch.mm(a, b, out=out)

    flops = config.train_flops(flow_batch) if train else config.forward_flops(flow_batch)
    measure(run, op=_yardstick_op(hidden, train), contender="torch", size=flow_batch, dtype=DTYPE, flops=flops,
            hidden=hidden, latent=LATENT, n_blocks=N_BLOCKS, n_mm=len(mms))


# ---------------------------------------------------------------------------------------------------
# the coupling flow


@pytest.fixture(scope="module")
def flow_cache(bench_config):
    """``get(contender, hidden)``: the contender's flow, built once per module (compiled graphs included)."""
    cache: dict[tuple[str, int], object] = {}

    def get(name: str, hidden: int):
        key = (name, hidden)
        if key not in cache:
            config = FlowConfig(dim=LATENT, n_blocks=N_BLOCKS, hidden=hidden, clamp=CLAMP)
            try:
                cache[key] = build(name, config, bench_config.device)
            except PeerUnavailable as e:
                cache[key] = e
        flow = cache[key]
        if isinstance(flow, PeerUnavailable):
            pytest.skip(f"{name}: {flow}")
        return flow

    return get


def _library(name: str) -> str | None:
    if name not in PEER_PACKAGES:
        return None
    dist = PEER_PACKAGES[name][1]
    return f"{dist} {importlib.metadata.version(dist)}"


def _flow_backend_op() -> str:
    """The dgm_fast op whose backend a flow row records: the whole-flow op where there is one."""
    return "coupling_flow" if "coupling_flow" in {op.name for op in registered_ops()} else "affine_coupling"


def _time_flow(measure, bench_config, flow_cache, name, backend, flow_batch, hidden, flow_pass):
    flow = flow_cache(name, hidden)
    z = _randn(flow_batch, LATENT, device=bench_config.device)
    if flow_pass == "forward":
        def fn():
            with torch.no_grad():
                return flow.forward(z)
    elif flow_pass == "inverse":
        with torch.no_grad():
            u = flow.forward(z)[0].detach()

        def fn():
            with torch.no_grad():
                return flow.inverse(u)
    else:
        def fn():
            return flow.train_step(z)

    train = flow_pass == "train"
    config = FlowConfig(dim=LATENT, n_blocks=N_BLOCKS, hidden=hidden)
    extra = {"library": _library(name)} if name in PEER_PACKAGES else {}
    measure(fn, op=f"coupling_flow_{flow_pass}_h{hidden}", contender=name, size=flow_batch, dtype=DTYPE,
            backend=backend, flops=config.train_flops(flow_batch) if train else config.forward_flops(flow_batch),
            gemm_yardstick=_yardstick_op(hidden, train), hidden=hidden, latent=LATENT, n_blocks=N_BLOCKS,
            scale=flow.scale, backend_op=_flow_backend_op(), **extra)


@pytest.mark.parametrize("flow_pass", PASSES)
def test_coupling_flow(measure, bench_config, flow_cache, flow_batch, hidden, flow_pass, contender, backend):
    _time_flow(measure, bench_config, flow_cache, contender, backend, flow_batch, hidden, flow_pass)


@pytest.mark.parametrize("flow_pass", PASSES)
@pytest.mark.parametrize("peer", PEERS)
def test_coupling_flow_peer(measure, bench_config, flow_cache, flow_batch, hidden, flow_pass, peer):
    _time_flow(measure, bench_config, flow_cache, peer, None, flow_batch, hidden, flow_pass)


# ---------------------------------------------------------------------------------------------------
# the GLF training step (dissertation section 3.2, MNIST setting)

GLF_IMAGE_SIZE = 28
GLF_CHANNELS = 1
GLF_LATENT = 20
GLF_HIDDEN = 64
GLF_BATCH = 256
GLF_LR = 1e-3
GLF_FLOW_WEIGHT_DECAY = 2e-5  # train_glf's defaults (appendix 3.2.6)


class _GLFEagerFlow(EagerCouplingFlow):
    """The eager flow with the ``dim`` attribute GLF checks its flow for."""

    @property
    def dim(self) -> int:
        return self.config.dim


def _glf_step(flow_contender: str | None, compiled: bool, device: torch.device):
    """One GLF training step as ``train_glf`` runs it: the flow of ``flow_contender`` (None: no flow,
    the auto-encoder's reconstruction loss only), the loss compiled or not."""
    from dgm_fast.models.autoencoder import InfoGANAutoEncoder
    from dgm_fast.models.glf import GLF, reconstruction_loss

    config = FlowConfig(dim=GLF_LATENT, n_blocks=N_BLOCKS, hidden=GLF_HIDDEN, clamp=CLAMP)
    if flow_contender == "dgm_fast":
        try:
            flow = build("dgm_fast", config, device).module  # CouplingFlow with the eager flow's weights
        except PeerUnavailable as e:
            pytest.skip(f"dgm_fast: {e}")
    else:
        flow = _GLFEagerFlow(config)  # also the (unused) flow of the ae_only step
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # every contender's auto-encoder has the same weights
        autoencoder = InfoGANAutoEncoder(GLF_IMAGE_SIZE, channels=GLF_CHANNELS, latent_dim=GLF_LATENT)
    model = GLF(autoencoder, flow, objective="glf", recon="mse").to(device).train()
    params = [{"params": model.autoencoder.parameters()}]
    if flow_contender is not None:
        params.append({"params": model.flow.parameters(), "weight_decay": GLF_FLOW_WEIGHT_DECAY})
    opt = torch.optim.Adam(params, lr=GLF_LR)

    if flow_contender is None:
        def loss_fn(x):
            return reconstruction_loss(x, model.autoencoder.decode(model.autoencoder.encode(x)), "mse")
    else:
        def loss_fn(x):
            return model(x).total
    if compiled:
        # torch.compile of the loss only (forward graph, backward through AOTAutograd); zero_grad,
        # backward and the Adam step stay eager, as in the flow rows' compiled train step
        loss_fn = torch.compile(loss_fn, dynamic=False, fullgraph=True)

    g = torch.Generator().manual_seed(1)
    x = torch.rand(GLF_BATCH, GLF_CHANNELS, GLF_IMAGE_SIZE, GLF_IMAGE_SIZE, generator=g, dtype=DTYPE).to(device)

    def step():
        loss = loss_fn(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step, config


def _glf_extra(config: FlowConfig | None) -> dict:
    extra = dict(latent=GLF_LATENT, batch=GLF_BATCH, image_size=GLF_IMAGE_SIZE, channels=GLF_CHANNELS,
                 recon="mse", objective="glf", optimizer="adam")
    if config is not None:
        extra.update(hidden=config.hidden, n_blocks=config.n_blocks, scale=ATAN_SCALE,
                     flow_flops=config.train_flops(GLF_BATCH))
    return extra


def test_glf_train_step(measure, bench_config, contender, backend):
    step, config = _glf_step(contender, contender == "compiled", bench_config.device)
    backend_op = _flow_backend_op() if contender == "dgm_fast" else None
    measure(step, op="glf_train_step", contender=contender, size=GLF_BATCH, dtype=DTYPE, backend=backend,
            backend_op=backend_op, **_glf_extra(config))


@pytest.mark.parametrize("ae_contender", ["eager", "compiled"])
def test_glf_train_step_ae_only(measure, bench_config, ae_contender):
    step, _ = _glf_step(None, ae_contender == "compiled", bench_config.device)
    measure(step, op="glf_train_step_ae_only", contender=ae_contender, size=GLF_BATCH, dtype=DTYPE,
            **_glf_extra(None))
