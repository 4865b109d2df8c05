"""Variable-rate mean-scale hyperprior codec (Minnen et al. 2018), optionally with a
channel-sliced checkerboard context model (He et al. 2021, 2022).

Rate control: per-level gain vectors (Cui et al. 2021) on the latent and hyper-latent,
interpolated *linearly* between adjacent levels so that the integer runtime can do the
same interpolation exactly.  The hyper-synthesis (entropy-parameter network) only uses
ops that have an exact fixed-point form: 'same' convolutions, ReLU and pixel shuffle.
It predicts means and *log*-scales, so the runtime never evaluates a transcendental
function on the path that drives the entropy coder.  The context model obeys the
same rules (convolutions, ReLU, integer-exact residual adds), so it has a fixed-point
twin as well (saic.codec.fixedpoint.ContextModel).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from saic.codec import fixedpoint
from saic.codec.fixedpoint import context_prefix  # one rule for which latents a step may read

SCALE_MIN = 0.11
SCALE_MAX = 64.0


@dataclass(frozen=True)
class CodecConfig:
    n: int = 64  # transform channels
    m: int = 96  # latent channels
    nz: int = 48  # hyper-latent channels
    nh: int = 64  # hyper-synthesis width
    lambdas: tuple[float, ...] = (0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.05)
    context_slices: int = 0  # channel slices of the checkerboard context model (0: none)
    nc: int = 128  # context parameter-network width
    synthesis_blocks: int = 0  # residual blocks after the synthesis's 1st and 2nd upsampling (each)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lambdas"] = list(self.lambdas)
        return d


class GDN(nn.Module):
    """Generalised divisive normalisation; `inverse=True` gives IGDN."""

    def __init__(self, ch: int, inverse: bool = False):
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.ones(ch))
        self.gamma = nn.Parameter(0.1 * torch.eye(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.beta.abs() + 1e-6
        gamma = self.gamma.abs()[:, :, None, None]
        norm = torch.sqrt(F.conv2d(x * x, gamma, beta))
        return x * norm if self.inverse else x / norm


def conv(i: int, o: int, k: int = 5, s: int = 2) -> nn.Conv2d:
    return nn.Conv2d(i, o, k, s, k // 2)


def deconv(i: int, o: int, k: int = 5, s: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(i, o, k, s, k // 2, output_padding=s - 1)


class Analysis(nn.Module):
    def __init__(self, c: CodecConfig):
        super().__init__()
        n, m = c.n, c.m
        self.net = nn.Sequential(conv(3, n), GDN(n), conv(n, n), GDN(n), conv(n, n), GDN(n), conv(n, m))

    def forward(self, x):
        return self.net(x)


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(x))), 3x3; the second convolution starts at zero (identity block),
    so blocks can be added to a trained synthesis without changing its output."""

    def __init__(self, ch: int):
        super().__init__()
        self.c1 = nn.Conv2d(ch, ch, 3, 1, 1)
        self.c2 = nn.Conv2d(ch, ch, 3, 1, 1)
        nn.init.zeros_(self.c2.weight)
        nn.init.zeros_(self.c2.bias)

    def forward(self, x):
        return x + self.c2(F.relu(self.c1(x)))


class Synthesis(nn.Module):
    """Four 5x5 stride-2 deconvolutions with IGDN; optionally `synthesis_blocks` residual
    blocks at 1/8 and at 1/4 resolution (not at 1/2, where a 3x3 convolution costs 4x more;
    two of each still double the synthesis FLOPs of saic-small, docs/performance.md)."""

    def __init__(self, c: CodecConfig):
        super().__init__()
        n, m = c.n, c.m
        self.net = nn.Sequential(
            deconv(m, n), GDN(n, True), deconv(n, n), GDN(n, True), deconv(n, n), GDN(n, True), deconv(n, 3)
        )
        self.refine8 = nn.Sequential(*(ResidualBlock(n) for _ in range(c.synthesis_blocks)))
        self.refine4 = nn.Sequential(*(ResidualBlock(n) for _ in range(c.synthesis_blocks)))

    def forward(self, y):
        h = self.refine8(self.net[1](self.net[0](y)))
        h = self.refine4(self.net[3](self.net[2](h)))
        return self.net[4:](h)


class HyperAnalysis(nn.Module):
    def __init__(self, c: CodecConfig):
        super().__init__()
        self.net = nn.Sequential(
            conv(c.m, c.nh, 3, 1), nn.LeakyReLU(0.1), conv(c.nh, c.nh, 5, 2), nn.LeakyReLU(0.1), conv(c.nh, c.nz, 5, 2)
        )

    def forward(self, y):
        return self.net(y)


class HyperSynthesis(nn.Module):
    """z_hat -> (means, log_scales).  Exactly mirrored by saic.codec.hyper (fixed point)."""

    def __init__(self, c: CodecConfig):
        super().__init__()
        self.c1 = nn.Conv2d(c.nz, c.nh, 3, 1, 1)
        self.c2 = nn.Conv2d(c.nh, 4 * c.nh, 3, 1, 1)
        self.c3 = nn.Conv2d(c.nh, 4 * c.nh, 3, 1, 1)
        self.c4 = nn.Conv2d(c.nh, 2 * c.m, 1, 1, 0)

    def forward(self, z):
        h = F.relu(self.c1(z))
        h = F.relu(F.pixel_shuffle(self.c2(h), 2))
        h = F.relu(F.pixel_shuffle(self.c3(h), 2))
        means, log_scales = self.c4(h).chunk(2, 1)
        return means, log_scales


def anchor_mask(h: int, w: int, device=None) -> torch.Tensor:
    """(1, 1, h, w) bool: the checkerboard's anchors (fixedpoint.anchor_mask, as a tensor)."""
    return torch.from_numpy(fixedpoint.anchor_mask(h, w))[None, None].to(device)


class ContextStep(nn.Module):
    """One coding step's parameters: a 5x5 convolution over the decoded latents, masked to the
    (tap, channel) pairs decoded before this step, then 1x1 layers on [hyper means, hyper
    log-scales, context] giving residuals for the step's channel slice (zero-initialised)."""

    def __init__(self, c: CodecConfig, step: int):
        super().__init__()
        width = c.m // c.context_slices
        self.ctx = nn.Conv2d(c.m, c.m, 5, 1, 2)
        mask = torch.zeros(c.m, 5, 5)
        for dy in range(5):
            for dx in range(5):
                mask[: context_prefix(step, width, dy, dx), dy, dx] = 1
        self.register_buffer("mask", mask[None], persistent=False)
        self.p1 = nn.Conv2d(3 * c.m, c.nc, 1)
        self.p2 = nn.Conv2d(c.nc, c.nc, 1)
        self.p3 = nn.Conv2d(c.nc, 2 * width, 1)
        nn.init.zeros_(self.p3.weight)
        nn.init.zeros_(self.p3.bias)

    def masked_conv(self) -> nn.Conv2d:
        """The context convolution with its masked-out weights zeroed (for export)."""
        conv = nn.Conv2d(self.ctx.in_channels, self.ctx.out_channels, 5, 1, 2)
        with torch.no_grad():
            conv.weight.copy_(self.ctx.weight * self.mask)
            conv.bias.copy_(self.ctx.bias)
        return conv

    def forward(self, y_hat, means, log_scales):
        c = F.conv2d(y_hat, self.ctx.weight * self.mask, self.ctx.bias, padding=2)
        h = F.relu(self.p1(torch.cat([means, log_scales, c], 1)))
        return self.p3(F.relu(self.p2(h))).chunk(2, 1)


class ContextModel(nn.Module):
    """Channel-sliced checkerboard context (He et al. 2021 checkerboard, He et al. 2022
    ELIC-style slices): the latent's channels in S slices, each coded anchors first, then
    non-anchors, every step conditioned on all steps before it.  S = 1 is the plain
    checkerboard.  Mirrored in fixed point by saic.codec.fixedpoint.ContextModel."""

    def __init__(self, c: CodecConfig):
        super().__init__()
        if c.m % c.context_slices:
            raise ValueError(f"{c.m} latent channels do not split into {c.context_slices} equal slices")
        self.slices = c.context_slices
        self.steps = nn.ModuleList(ContextStep(c, k) for k in range(1, 2 * c.context_slices))

    def forward(self, y, means, log_scales):
        """(means, log_scales) of y, step by step; log_scales already clamped.  Each step sees
        the latents of the steps before it quantised as the decoder will see them."""
        anchor = anchor_mask(*y.shape[2:], device=y.device)
        hm, hl, ys = means.chunk(self.slices, 1), log_scales.chunk(self.slices, 1), y.chunk(self.slices, 1)
        out_m, out_l, known = [], [], []

        def step(k, current):
            y_hat = torch.cat(known + current + [torch.zeros_like(hm[0])] * (self.slices - len(known) - len(current)), 1)
            d_m, d_l = self.steps[k - 1](y_hat, means, log_scales)
            s = k // 2
            return hm[s] + d_m, (hl[s] + d_l).clamp(math.log(SCALE_MIN), math.log(SCALE_MAX))

        for s in range(self.slices):
            m_s, l_s = hm[s], hl[s]
            if s > 0:
                a_m, a_l = step(2 * s, [])
                m_s, l_s = torch.where(anchor, a_m, m_s), torch.where(anchor, a_l, l_s)
            anchors = torch.where(anchor, round_ste(ys[s] - m_s) + m_s, torch.zeros_like(m_s))
            n_m, n_l = step(2 * s + 1, [anchors])
            m_s, l_s = torch.where(anchor, m_s, n_m), torch.where(anchor, l_s, n_l)
            known.append(round_ste(ys[s] - m_s) + m_s)
            out_m.append(m_s)
            out_l.append(l_s)
        return torch.cat(out_m, 1), torch.cat(out_l, 1)


class FactorizedPrior(nn.Module):
    """Ballé et al. 2018 univariate non-parametric density, one per channel."""

    def __init__(self, ch: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        f = (1,) + filters + (1,)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / f[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((ch, f[i + 1], f[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(ch, f[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(ch, f[i + 1], 1)))

    def _logits_cdf(self, x: torch.Tensor) -> torch.Tensor:
        # x: (C, 1, N)
        for i, (mat, b) in enumerate(zip(self.matrices, self.biases)):
            x = torch.matmul(F.softplus(mat), x) + b
            if i < len(self.factors):
                x = x + torch.tanh(self.factors[i]) * torch.tanh(x)
        return x

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """P(z in [v-0.5, v+0.5]) for each element of z (B, C, H, W)."""
        b, c, h, w = z.shape
        v = z.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self._logits_cdf(v - 0.5)
        upper = self._logits_cdf(v + 0.5)
        sign = -torch.sign(lower + upper).detach()
        lik = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        return lik.reshape(c, b, h, w).permute(1, 0, 2, 3)

    def pmf_table(self, lo: int, hi: int) -> torch.Tensor:
        """(C, hi-lo+1) probabilities of the integers lo..hi (for export)."""
        c = self.matrices[0].shape[0]
        v = torch.arange(lo, hi + 1, dtype=torch.float32).expand(c, 1, -1)
        lower, upper = self._logits_cdf(v - 0.5), self._logits_cdf(v + 0.5)
        sign = -torch.sign(lower + upper)
        return (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()[:, 0, :]


def gaussian_likelihood(y: torch.Tensor, means: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    v = (y - means).abs()
    upper = torch.special.ndtr((0.5 - v) / scales)
    lower = torch.special.ndtr((-0.5 - v) / scales)
    return upper - lower


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class VariableRateCodec(nn.Module):
    def __init__(self, c: CodecConfig = CodecConfig()):
        super().__init__()
        self.config = c
        L = len(c.lambdas)
        self.g_a, self.g_s = Analysis(c), Synthesis(c)
        self.h_a, self.h_s = HyperAnalysis(c), HyperSynthesis(c)
        self.prior = FactorizedPrior(c.nz)
        self.ctx = ContextModel(c) if c.context_slices else None
        # gains stored in log-domain for training stability; interpolated linearly in gain space
        init = torch.linspace(math.log(0.5), math.log(2.0), L)[:, None].expand(L, c.m).clone()
        self.log_gain = nn.Parameter(init)
        self.log_inv_gain = nn.Parameter(-init.clone())
        self.log_hgain = nn.Parameter(torch.zeros(L, c.nz))
        self.log_inv_hgain = nn.Parameter(torch.zeros(L, c.nz))

    @property
    def levels(self) -> int:
        return len(self.config.lambdas)

    @staticmethod
    def _interp(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Linear interpolation of exp(table) rows at continuous level positions t (B,)."""
        g = table.exp()
        i = t.floor().clamp(0, g.shape[0] - 2).long()
        f = (t - i.float())[:, None]
        return ((1 - f) * g[i] + f * g[i + 1])[:, :, None, None]

    def relevel(self, lambdas: tuple[float, ...]) -> "VariableRateCodec":
        """A copy at other rate levels: each gain table row is interpolated linearly in log-λ
        between the two nearest old levels, extrapolated from the end pair outside them
        (gains of a trained model vary smoothly with log-λ, so new levels start close)."""
        old = torch.tensor(self.config.lambdas, dtype=torch.float64).log()
        new = torch.tensor(lambdas, dtype=torch.float64).log()
        j = (torch.searchsorted(old, new) - 1).clamp(0, len(old) - 2)
        f = ((new - old[j]) / (old[j + 1] - old[j])).float()[:, None]
        model = VariableRateCodec(replace(self.config, lambdas=tuple(lambdas)))
        state = self.state_dict()
        for k in ("log_gain", "log_inv_gain", "log_hgain", "log_inv_hgain"):
            t = state[k].float()
            state[k] = (1 - f) * t[j] + f * t[j + 1]
        model.load_state_dict(state)
        return model

    def grown(self, new: str, **changes) -> tuple["VariableRateCodec", list[str]]:
        """A copy with config `changes` that only add weights (keys starting with `new`: the
        context model, synthesis blocks), every other weight kept; also the keys it added
        (none when this model had them already, e.g. when continuing)."""
        model = VariableRateCodec(replace(self.config, **changes))
        added = model.load_state_dict(self.state_dict(), strict=False).missing_keys
        if not all(k.startswith(new) for k in added):
            raise ValueError(f"{changes} adds weights outside {new!r}: {added}")
        return model, added

    def lmbda(self, t: torch.Tensor) -> torch.Tensor:
        lam = torch.tensor(self.config.lambdas, device=t.device).log()
        i = t.floor().clamp(0, len(self.config.lambdas) - 2).long()
        f = t - i.float()
        return ((1 - f) * lam[i] + f * lam[i + 1]).exp()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> dict:
        """x in [0,1], t: (B,) level positions in [0, L-1]."""
        y = self.g_a(x) * self._interp(self.log_gain, t)
        z = self.h_a(y) * self._interp(self.log_hgain, t)
        z_noisy = z + torch.empty_like(z).uniform_(-0.5, 0.5) if self.training else torch.round(z)
        z_lik = self.prior.likelihood(z_noisy)
        z_hat = round_ste(z) if self.training else torch.round(z)
        means, log_scales = self.entropy_parameters(y, z_hat, t)
        scales = log_scales.exp()
        if self.training:
            y_noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
            y_lik = gaussian_likelihood(y_noisy, means, scales)
        else:
            y_lik = gaussian_likelihood(torch.round(y - means) + means, means, scales)
        y_hat = round_ste(y - means) + means
        x_hat = self.g_s(y_hat * self._interp(self.log_inv_gain, t))
        return {"x_hat": x_hat, "y_lik": y_lik.clamp_min(1e-9), "z_lik": z_lik.clamp_min(1e-9)}


    def entropy_parameters(self, y: torch.Tensor, z_hat: torch.Tensor, t: torch.Tensor):
        """(means, clamped log-scales) of y: the hyper-prior's, refined step by step by the
        context model from the latents quantised before each step (as the decoder sees them)."""
        means, log_scales = self.hyper_parameters(z_hat, t)
        if self.ctx is None:
            return means, log_scales
        return self.ctx(y, means, log_scales)

    def hyper_parameters(self, z_hat: torch.Tensor, t: torch.Tensor):
        """(means, clamped log-scales) of y from the hyper-prior alone."""
        means, log_scales = self.h_s(z_hat * self._interp(self.log_inv_hgain, t))
        return means, log_scales.clamp(math.log(SCALE_MIN), math.log(SCALE_MAX))


def rd_loss(out: dict, x: torch.Tensor, lmbda: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample rate (bpp) + lambda * 255^2 * MSE, averaged over the batch."""
    b, _, h, w = x.shape
    bits = -(out["y_lik"].log2().flatten(1).sum(1) + out["z_lik"].log2().flatten(1).sum(1))
    bpp = bits / (h * w)
    mse = (out["x_hat"] - x).pow(2).flatten(1).mean(1)
    loss = (bpp + lmbda * 255**2 * mse).mean()
    return loss, bpp.mean(), mse.mean()
