"""The affine coupling flow of the benchmarks, built by each contender: plain PyTorch, torch.compile,
dgm_fast and the libraries users pick today (FrEIA, normflows, nflows, zuko).

The flow (the issue's configuration, ``FlowConfig()``): latent 64, 4 blocks; a block is two affine
couplings on the halves 32/32 followed by a fixed random permutation of the 64 features. A coupling
transforms one half with ``y = x * exp(l) + t`` where ``[s, t] = subnet(other half)``, one subnet per
coupling (Linear(32, h) -> ReLU -> Linear(h, h) -> ReLU -> Linear(h, 64)) and ``l`` the log-scale;
as in ``dgm_fast.nn.CouplingFlow`` the first coupling of a block maps the second half from the first,
the second coupling maps the first half from the new second half. ``l = g(s)`` is the atan soft
clamp ``clamp * (2/pi) * atan(s / clamp)`` with clamp 2 (GLF's, from FrEIA) where the library allows
it; ``PeerFlow.scale`` says what each one computes instead.

Every builder returns a ``PeerFlow`` with the same three callables:

* ``forward(z) -> (u, logdet)``: data to base, the multiplicative direction ``x * exp(l) + t``;
* ``inverse(u) -> (z, logdet)``: base to data, ``(y - t) * exp(-l)``, with its log-determinant;
* ``train_step(z)``: forward, the NLL ``mean(-log N(u; 0, I) - logdet)`` and backward to all parameters.

Subnet weights and permutations are those of ``EagerCouplingFlow(config)`` (seeded), copied into each
contender's layout, so dgm_fast, eager and compiled compute the same function, normflows, nflows and
zuko differ only in their scale function, and FrEIA only in the order of a block's two couplings
(GLOWCouplingBlock always maps the first half first).
A peer that is not installed raises ``PeerUnavailable`` with the install command.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

TWO_OVER_PI = 2.0 / math.pi
LOG_2PI = math.log(2.0 * math.pi)
INSTALL_HINT = "pip install --no-build-isolation -e '.[bench]'"

# contender -> (module to import, distribution on PyPI); contenders without an entry need only torch
PEER_PACKAGES = {
    "freia": ("FrEIA", "FrEIA"),
    "normflows": ("normflows", "normflows"),
    "nflows": ("nflows", "nflows"),
    "zuko": ("zuko", "zuko"),
}


class PeerUnavailable(RuntimeError):
    """The contender cannot be built here; the message says why and how to fix it."""


@dataclass(frozen=True)
class FlowConfig:
    dim: int = 64
    n_blocks: int = 4
    hidden: int = 64
    n_hidden_layers: int = 2
    clamp: float = 2.0
    seed: int = 0

    @property
    def split(self) -> tuple[int, int]:
        """Sizes of the two halves (first, second)."""
        return self.dim // 2, self.dim - self.dim // 2

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every Linear of the flow, in forward order."""
        shapes = []
        h1, h2 = self.split
        for _ in range(self.n_blocks):
            for n_in, n_out in ((h1, h2), (h2, h1)):  # coupling 1 maps the second half, 2 the first
                widths = [n_in] + [self.hidden] * self.n_hidden_layers + [2 * n_out]
                shapes += list(zip(widths[:-1], widths[1:]))
        return shapes

    def forward_flops(self, batch: int) -> int:
        """Multiply-add flops (2 per MAC) of the subnets' GEMMs in one forward or inverse pass."""
        return sum(2 * batch * n_in * n_out for n_in, n_out in self.linear_shapes())

    def train_flops(self, batch: int) -> int:
        """GEMM flops of forward + backward: the usual 3x forward (grad of inputs and of weights)."""
        return 3 * self.forward_flops(batch)


@dataclass
class PeerFlow:
    name: str
    module: nn.Module
    forward: Callable[[Tensor], tuple[Tensor, Tensor]]
    inverse: Callable[[Tensor], tuple[Tensor, Tensor]]
    nll: Callable[[Tensor], Tensor]  # mean negative log-likelihood of a batch
    scale: str  # the log-scale function this contender computes
    note: str = ""

    def train_step(self, z: Tensor) -> Tensor:
        self.module.zero_grad(set_to_none=True)
        loss = self.nll(z)
        loss.backward()
        return loss


def gaussian_nll(u: Tensor, logdet: Tensor) -> Tensor:
    """mean over the batch of -log N(u; 0, I) - logdet."""
    return (0.5 * u.pow(2).sum(dim=1) + 0.5 * u.shape[1] * LOG_2PI - logdet).mean()


def subnet(n_in: int, n_out: int, hidden: int, n_hidden_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    widths = [n_in] + [hidden] * n_hidden_layers
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], n_out))


def soft_clamp(s: Tensor, clamp: float) -> Tensor:
    return clamp * (2 / math.pi) * torch.atan(s / clamp)


class EagerCouplingFlow(nn.Module):
    """The flow as a user writes it in plain PyTorch; its seeded weights are every peer's weights.

    ``separate_st=True`` gives each coupling two subnets (s and t, each with half the output), as the
    issue's torch.compile row was measured: twice the hidden-layer GEMMs, and weights of its own.
    """

    def __init__(self, config: FlowConfig, separate_st: bool = False):
        super().__init__()
        self.config, self.separate_st = config, separate_st
        c = config
        h1, h2 = c.split
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            nets = []
            for _ in range(c.n_blocks):
                for n_in, n_out in ((h1, h2), (h2, h1)):
                    if separate_st:
                        nets.append(nn.ModuleList([subnet(n_in, n_out, c.hidden, c.n_hidden_layers) for _ in "st"]))
                    else:
                        nets.append(subnet(n_in, 2 * n_out, c.hidden, c.n_hidden_layers))
            self.nets = nn.ModuleList(nets)
            perms = [torch.randperm(c.dim) for _ in range(c.n_blocks)]
        for b, perm in enumerate(perms):
            self.register_buffer(f"perm{b}", perm)
            self.register_buffer(f"inv_perm{b}", torch.argsort(perm))

    def _st(self, k: int, x: Tensor) -> tuple[Tensor, Tensor]:
        net = self.nets[k]
        if self.separate_st:
            s = net[0](x)
            t = net[1](x)
            return s, t
        return net(x).chunk(2, dim=1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        h1 = self.config.split[0]
        clamp = self.config.clamp
        logdet = z.new_zeros(z.shape[0])
        for b in range(self.config.n_blocks):
            x1, x2 = z[:, :h1], z[:, h1:]
            s, t = self._st(2 * b, x1)
            log_s2 = soft_clamp(s, clamp)
            y2 = x2 * torch.exp(log_s2) + t
            s, t = self._st(2 * b + 1, y2)
            log_s1 = soft_clamp(s, clamp)
            y1 = x1 * torch.exp(log_s1) + t
            logdet = logdet + log_s2.sum(dim=1) + log_s1.sum(dim=1)
            z = torch.cat([y1, y2], dim=1).index_select(1, getattr(self, f"perm{b}"))
        return z, logdet

    def inverse(self, u: Tensor) -> tuple[Tensor, Tensor]:
        h1 = self.config.split[0]
        clamp = self.config.clamp
        logdet = u.new_zeros(u.shape[0])
        for b in reversed(range(self.config.n_blocks)):
            y = u.index_select(1, getattr(self, f"inv_perm{b}"))
            y1, y2 = y[:, :h1], y[:, h1:]
            s, t = self._st(2 * b + 1, y2)
            log_s1 = soft_clamp(s, clamp)
            x1 = (y1 - t) * torch.exp(-log_s1)
            s, t = self._st(2 * b, x1)
            log_s2 = soft_clamp(s, clamp)
            x2 = (y2 - t) * torch.exp(-log_s2)
            logdet = logdet - log_s1.sum(dim=1) - log_s2.sum(dim=1)
            u = torch.cat([x1, x2], dim=1)
        return u, logdet

    def log_prob(self, z: Tensor) -> Tensor:
        u, logdet = self(z)
        return -0.5 * u.pow(2).sum(dim=1) - 0.5 * u.shape[1] * LOG_2PI + logdet


ATAN_SCALE = "atan soft clamp: clamp*(2/pi)*atan(s/clamp), clamp 2"


def _require(name: str):
    module, dist = PEER_PACKAGES[name]
    if importlib.util.find_spec(module) is None:
        raise PeerUnavailable(f"{dist} is not installed; install the bench extra: {INSTALL_HINT}")
    return importlib.import_module(module)


def _linears(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if hasattr(m, "weight") and isinstance(getattr(m, "weight"), Tensor)]


@torch.no_grad()
def _copy_subnet(dst: nn.Module, src: nn.Sequential, out_rows: Tensor | None = None) -> None:
    """Copy ``src``'s Linear weights into ``dst``'s, reordering the last layer's outputs by ``out_rows``."""
    d, s = _linears(dst), _linears(src)
    assert len(d) == len(s), (dst, src)
    for i, (a, b) in enumerate(zip(d, s)):
        w, bias = b.weight, b.bias
        if i == len(d) - 1 and out_rows is not None:
            w, bias = w[out_rows], bias[out_rows]
        a.weight.copy_(w)
        a.bias.copy_(bias)


def _interleave_rows(n: int) -> Tensor:
    """Rows [t0, s0, t1, s1, ...] of an [s, t] output: the (shift, scale) interleaving of normflows and zuko."""
    return torch.stack([torch.arange(n, 2 * n), torch.arange(n)], dim=1).reshape(-1)


def _swap_rows(n: int) -> Tensor:
    """Rows [t, s] of an [s, t] output (nflows: shift first)."""
    return torch.cat([torch.arange(n, 2 * n), torch.arange(n)])


def _perms(ref: EagerCouplingFlow) -> list[Tensor]:
    return [getattr(ref, f"perm{b}") for b in range(ref.config.n_blocks)]


def build_eager(config: FlowConfig, device: torch.device | str = "cpu") -> PeerFlow:
    flow = EagerCouplingFlow(config).to(device)
    return PeerFlow("eager", flow, flow.forward, flow.inverse, lambda z: gaussian_nll(*flow(z)), ATAN_SCALE,
                    "plain PyTorch: one Sequential subnet per coupling giving [s, t]; permutation by index_select")


# The issue measured torch.compile of a flow with separate s and t subnets; one [s, t] subnet (the eager
# flow as it is) does half the hidden-layer GEMMs and compiles to the faster flow: 1.6-3.5x faster
# forward, inverse and train step at hidden 64 and 256, batch 256 (the 2-core Xeon, one thread, since
# the shared machine was too busy for two), so "compiled" compiles the eager flow itself.
COMPILE_SEPARATE_ST = False


def build_compiled(config: FlowConfig, device: torch.device | str = "cpu",
                   separate_st: bool = COMPILE_SEPARATE_ST) -> PeerFlow:
    flow = EagerCouplingFlow(config, separate_st=separate_st).to(device)
    # dynamic=False: one graph specialised per shape, as a fixed-shape training loop gets
    compile_ = functools.partial(torch.compile, dynamic=False, fullgraph=True)
    forward = compile_(flow.forward)
    inverse = compile_(flow.inverse)
    nll = compile_(lambda z: gaussian_nll(*flow(z)))
    nets = "separate s and t subnets" if separate_st else "one [s, t] subnet per coupling"
    return PeerFlow("compiled", flow, forward, inverse, nll, ATAN_SCALE,
                    f"torch.compile(dynamic=False, fullgraph=True) of the eager flow ({nets}); the train step "
                    "compiles forward + NLL, backward through AOTAutograd")


def build_freia(config: FlowConfig, device: torch.device | str = "cpu") -> PeerFlow:
    _require("freia")
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    ref = EagerCouplingFlow(config)
    c = config
    h1, _ = c.split
    clamp = c.clamp

    # FrEIA 0.2's "ATAN" is clamp * 0.636 * atan(s), without the /clamp of GLF's (older FrEIA's) soft
    # clamp; the callable gives the same function as the others at the same cost (one more division).
    def clamp_activation(u):
        return TWO_OVER_PI * torch.atan(u / clamp)

    inn = Ff.SequenceINN(c.dim)
    for b in range(c.n_blocks):
        inn.append(Fm.GLOWCouplingBlock, clamp=clamp, clamp_activation=clamp_activation, split_len=h1,
                   subnet_constructor=lambda n_in, n_out: subnet(n_in, n_out, c.hidden, c.n_hidden_layers))
        inn.append(Fm.PermuteRandom, seed=c.seed + b)
    with torch.no_grad():
        for b in range(c.n_blocks):
            block, permute = inn[2 * b], inn[2 * b + 1]
            # GLOWCouplingBlock first maps x1 with subnet2(x2), then x2 with subnet1(y1): the same
            # subnets in the same roles (subnet1 reads the first half and writes the second), applied
            # in the other order
            _copy_subnet(block.subnet1, ref.nets[2 * b])
            _copy_subnet(block.subnet2, ref.nets[2 * b + 1])
            perm = _perms(ref)[b]
            permute.perm.copy_(perm)
            permute.perm_inv.copy_(torch.argsort(perm))
    inn.to(device)
    return PeerFlow("freia", inn, lambda z: inn(z), lambda u: inn(u, rev=True),
                    lambda z: gaussian_nll(*inn(z)), ATAN_SCALE + " (clamp_activation callable)",
                    "Ff.SequenceINN of Fm.GLOWCouplingBlock (one subnet per coupling) + Fm.PermuteRandom")


def build_normflows(config: FlowConfig, device: torch.device | str = "cpu") -> PeerFlow:
    nf = _require("normflows")
    ref = EagerCouplingFlow(config)
    c = config
    h1, h2 = c.split
    flows = []
    for b in range(c.n_blocks):
        # channel: the second half is mapped from the first; channel_inv: the first from the second
        first = subnet(h1, 2 * h2, c.hidden, c.n_hidden_layers)
        second = subnet(h2, 2 * h1, c.hidden, c.n_hidden_layers)
        _copy_subnet(first, ref.nets[2 * b], _interleave_rows(h2))  # normflows: shift 0::2, scale 1::2
        _copy_subnet(second, ref.nets[2 * b + 1], _interleave_rows(h1))
        permute = nf.flows.Permute(c.dim, mode="shuffle")
        perm = _perms(ref)[b]
        permute.perm.copy_(perm)
        permute.inv_perm.copy_(torch.argsort(perm))
        flows += [nf.flows.AffineCouplingBlock(first, scale_map="exp", split_mode="channel"),
                  nf.flows.AffineCouplingBlock(second, scale_map="exp", split_mode="channel_inv"),
                  permute]
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(c.dim, trainable=False), flows).to(device)
    # AffineCoupling.forward is the multiplicative direction z2 * exp(s) + t
    return PeerFlow("normflows", model, model.forward_and_log_det, model.inverse_and_log_det,
                    lambda z: gaussian_nll(*model.forward_and_log_det(z)),
                    "exp (unclamped): normflows offers exp, sigmoid and sigmoid_inv scale maps, no atan clamp",
                    "nf.flows.AffineCouplingBlock (Split, AffineCoupling, Merge) x2 + nf.flows.Permute('shuffle') "
                    "in nf.NormalizingFlow")


class _ContextSubnet(nn.Module):
    """nflows calls its transform nets as ``net(x, context)``."""

    def __init__(self, net: nn.Sequential):
        super().__init__()
        self.net = net

    def forward(self, x, context=None):
        return self.net(x)


def build_nflows(config: FlowConfig, device: torch.device | str = "cpu") -> PeerFlow:
    _require("nflows")
    from nflows.transforms import AffineCouplingTransform, CompositeTransform, RandomPermutation

    ref = EagerCouplingFlow(config)
    c = config
    h1, h2 = c.split
    nets = iter(ref.nets)

    def make_net(n_in, n_out):
        net = subnet(n_in, n_out, c.hidden, c.n_hidden_layers)
        _copy_subnet(net, next(nets), _swap_rows(n_out // 2))  # nflows: shift first, then scale
        return _ContextSubnet(net)

    transforms = []
    for b in range(c.n_blocks):
        first = torch.cat([torch.zeros(h1), torch.ones(h2)])  # > 0: transformed
        transforms += [AffineCouplingTransform(first, make_net), AffineCouplingTransform(1 - first, make_net)]
        permutation = RandomPermutation(c.dim)
        perm = _perms(ref)[b]
        permutation._permutation.copy_(perm)
        transforms.append(permutation)
    model = CompositeTransform(transforms).to(device)
    # Transform.forward: data to noise, inputs * scale + shift; inverse returns its logabsdet too
    return PeerFlow("nflows", model, lambda z: model(z), model.inverse, lambda z: gaussian_nll(*model(z)),
                    "sigmoid(s + 2) + 1e-3 (nflows' fixed scale; no clamp option)",
                    "AffineCouplingTransform x2 + RandomPermutation in a CompositeTransform")


def build_zuko(config: FlowConfig, device: torch.device | str = "cpu") -> PeerFlow:
    _require("zuko")
    from zuko.flows import Flow, GeneralCouplingTransform
    from zuko.lazy import UnconditionalDistribution, UnconditionalTransform
    from zuko.distributions import DiagNormal
    from zuko.transforms import MonotonicAffineTransform, PermutationTransform

    ref = EagerCouplingFlow(config)
    c = config
    h1, h2 = c.split
    # MonotonicAffineTransform's log-scale is the rational soft clamp a / (1 + |a / log(slope)|);
    # slope exp(-clamp) bounds it to +-clamp like the atan clamp (the default slope 1e-3 gives +-6.9)
    univariate = functools.partial(MonotonicAffineTransform, slope=math.exp(-c.clamp))
    transforms = []
    for b in range(c.n_blocks):
        # zuko's mask: True = the constant (conditioning) features
        cond_first = torch.arange(c.dim) < h1
        for k, mask in enumerate((cond_first, ~cond_first)):
            t = GeneralCouplingTransform(c.dim, mask=mask, univariate=univariate,
                                         hidden_features=[c.hidden] * c.n_hidden_layers)
            n_out = h2 if k == 0 else h1
            _copy_subnet(t.hyper, ref.nets[2 * b + k], _interleave_rows(n_out))  # (shift, scale) per feature
            transforms.append(t)
        transforms.append(UnconditionalTransform(PermutationTransform, _perms(ref)[b].clone(), buffer=True))
    base = UnconditionalDistribution(DiagNormal, torch.zeros(c.dim), torch.ones(c.dim), buffer=True)
    flow = Flow(transforms, base).to(device)

    def forward(z):
        return flow.transform().call_and_ladj(z)

    def inverse(u):
        # zuko's own sampling path (NormalizingFlow.rsample_and_log_prob): the generic Inverse transform
        # computes y = f^-1(u), then -ladj of f at y, which runs each coupling's hyper-network again
        return flow.transform().inv.call_and_ladj(u)

    return PeerFlow("zuko", flow, forward, inverse, lambda z: gaussian_nll(*forward(z)),
                    "rational soft clamp a / (1 + |a| / 2) (MonotonicAffineTransform, slope exp(-2))",
                    "zuko.flows.Flow of GeneralCouplingTransform (MonotonicAffineTransform, ReLU MLP hyper) x2 + "
                    "PermutationTransform, as zuko.flows.NICE/RealNVP builds it with half masks")


def build_dgm_fast(config: FlowConfig, device: torch.device | str = "cpu") -> PeerFlow:
    # a missing dgm_fast.nn skips; one that exists and fails to import is an error, not a skip
    module = importlib.import_module("dgm_fast.nn") if importlib.util.find_spec("dgm_fast.nn") else None
    CouplingFlow = getattr(module, "CouplingFlow", None)
    if CouplingFlow is None:
        raise PeerUnavailable("dgm_fast.nn.CouplingFlow does not exist yet in this checkout")
    c = config
    flow = CouplingFlow(c.dim, n_blocks=c.n_blocks, hidden=c.hidden, n_hidden_layers=c.n_hidden_layers,
                        scale="atan", clamp=c.clamp, activation="relu", seed=c.seed)
    copied = _copy_into_dgm_fast(flow, EagerCouplingFlow(config))
    flow.to(device)
    weights = ("the eager flow's weights and permutations" if copied
               else "its own seeded weights (layout not recognised)")
    return PeerFlow("dgm_fast", flow, flow.forward, flow.inverse, lambda z: -flow.log_prob(z).mean(), ATAN_SCALE,
                    f"dgm_fast.nn.CouplingFlow with {weights}; NLL through its log_prob")


@torch.no_grad()
def _copy_into_dgm_fast(flow: nn.Module, ref: EagerCouplingFlow) -> bool:
    """Give ``flow`` the eager flow's subnets (``flow.subnets[k]``: coupling k's Linears, same order of
    couplings) and permutations, if its layout is that one; False (nothing copied) otherwise."""
    subnets = getattr(flow, "subnets", None)
    perms = [getattr(flow, f"perm{b}", None) for b in range(ref.config.n_blocks)]
    if subnets is None or len(subnets) != len(ref.nets) or any(p is None for p in perms):
        return False
    pairs = [(_linears(d), _linears(s)) for d, s in zip(subnets, ref.nets)]
    if any([a.weight.shape for a in d] != [b.weight.shape for b in s] for d, s in pairs):
        return False
    for dst, src in zip(subnets, ref.nets):
        _copy_subnet(dst, src)
    for b, perm in enumerate(_perms(ref)):
        getattr(flow, f"perm{b}").copy_(perm)
        getattr(flow, f"inv_perm{b}").copy_(torch.argsort(perm))
    return True


BUILDERS: dict[str, Callable[..., PeerFlow]] = {
    "dgm_fast": build_dgm_fast,
    "eager": build_eager,
    "compiled": build_compiled,
    "freia": build_freia,
    "normflows": build_normflows,
    "nflows": build_nflows,
    "zuko": build_zuko,
}
PEERS = tuple(PEER_PACKAGES)  # the third-party contenders


def build(name: str, config: FlowConfig, device: torch.device | str = "cpu") -> PeerFlow:
    """The flow of contender ``name``; raises PeerUnavailable where it cannot be built here."""
    return BUILDERS[name](config, device)
