import math

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.losses.mixins import WeightRegularizerMixin
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from .. import backends, poincare
from ..distances import PoincareDistance
from ..utils.checks import check_curvature, check_embeddings, check_in_ball, check_labels


class HyperbolicSoftTripleLoss(WeightRegularizerMixin, BaseMetricLossFunction):
    r"""SoftTriple loss (Qian et al., ICCV 2019) with proxies in the Poincaré ball and :math:`-d_c` as similarity.

    Each class :math:`j` has :math:`K` proxies :math:`p_j^k` in the ball. With :math:`s_{ijk} = -d_c(x_i, p_j^k)`:

    .. math::

        S_{ij} = \sum_k \operatorname{softmax}_k(s_{ijk}/\gamma)\, s_{ijk}, \qquad
        \ell_i = \operatorname{CE}\big(\lambda\,(S_{i\cdot} - \delta\,\mathbb 1[\cdot = y_i]),\ y_i\big)

    so :math:`\lambda` (``la``) is a scale per unit of hyperbolic distance, and :math:`\gamma` and :math:`\delta` are in
    distance units (pml's ``SoftTripleLoss`` uses the same formula with cosine similarity, range [-1, 1]).

    Proxies live in the tangent space at the origin and are mapped on every forward by the map of
    :class:`~pml_hyperbolic.layers.ToPoincare`, :math:`p = \exp_0(\min(1, r/\|u\|)\,u)`, so any torch optimizer
    trains them and they never leave the ball (with ``clip_r`` they stay within distance :math:`2r` of the origin,
    the region of the embeddings). With ``manifold_proxies=True`` they are a geoopt ``ManifoldParameter`` of ball
    points instead, to be trained with ``geoopt.optim.RiemannianAdam``/``RiemannianSGD``.

    Optional center regularizer (the paper's τ term, with the hyperbolic distance): ``centers_reg_weight`` ·
    the mean of :math:`d_c(p_j^t, p_j^s)` over the pairs :math:`t < s` of each class, which lets redundant proxies
    merge. The paper's :math:`\tau \sum_{j, t<s} \|w_j^t - w_j^s\| / (CK(K-1))` is ``centers_reg_weight = τ/2``.

    Default hyperparameters, chosen on the digits zero-shot split (``benchmarks/digits_softtriple.py --sweep``:
    MAP@R on the unseen digits 5-9 over seeds 3-7; la × proxy lr, then γ, then δ, then c × clip_r): see the README.

    Args:
        num_classes: number of classes C; labels must lie in [0, C).
        embedding_size: width D of the ball embeddings.
        centers_per_class: number of proxies K per class.
        la: λ, the logit scale per unit of distance.
        gamma: γ, the temperature (in distance units) of the softmax over a class's proxies.
        margin: δ, subtracted (in distance units) from the target class's similarity.
        c: curvature of the ball (float > 0, or a tensor shared with ``ToPoincare``/``PoincareDistance``).
        clip_r: tangent clipping radius of the proxies (as ``ToPoincare``'s); ``None`` disables clipping.
        centers_reg_weight: weight of the center regularizer (0 disables it; needs ``centers_per_class > 1``).
        manifold_proxies: keep the proxies as a ``geoopt.ManifoldParameter`` on ``geoopt.PoincareBall(c)``.
        **kwargs: pml's ``distance`` (default ``PoincareDistance(c)``; an inverted distance is used as the similarity
            itself, a non-inverted one as :math:`-d`; proxies are ball points of curvature ``c`` either way),
            ``reducer``, ``weight_init_func`` (applied to the tangent vectors), ``weight_regularizer`` (applied to the
            ball proxies, shape (C·K, D)), ``weight_reg_weight``, ``embedding_regularizer``, ``collect_stats``.

    Reducer input: ``loss``: one element per sample (weighted by the miner's ``indices_tuple`` as pml's
    ``SoftTripleLoss`` does), divisor = batch size; ``centers_reg_loss`` (if enabled): one element per same-class
    proxy pair, divisor = number of pairs (``DivisorReducer`` then equals ``MeanReducer``). Default reducer:
    ``MeanReducer``. This loss requires an optimizer for its proxies (in pml trainers, key ``metric_loss_optimizer``;
    see :func:`pml_hyperbolic.utils.optim.param_groups` for a separate proxy learning rate).
    """

    def __init__(
        self,
        num_classes,
        embedding_size,
        centers_per_class=10,
        la=32.0,
        gamma=0.1,
        margin=0.01,
        c=0.1,
        clip_r=2.3,
        centers_reg_weight=0.0,
        manifold_proxies=False,
        **kwargs,
    ):
        _check_hyperparameters(num_classes, embedding_size, centers_per_class, la, gamma, margin, clip_r)
        check_curvature(c)
        if not centers_reg_weight >= 0:
            raise ValueError(f"centers_reg_weight must be >= 0, got {centers_reg_weight!r}.")
        if centers_reg_weight > 0 and centers_per_class < 2:
            raise ValueError(
                "The center regularizer needs centers_per_class > 1 (it pulls a class's proxies together)."
            )
        if manifold_proxies and isinstance(c, torch.Tensor):
            raise ValueError("manifold_proxies=True needs a float c (geoopt's PoincareBall holds its own curvature).")
        # read by _sub_loss_names() and get_default_distance() inside super().__init__ (a tuple: c may be a Parameter,
        # which a module cannot hold before its __init__)
        self.centers_reg_weight, self._default_c = centers_reg_weight, (c,)
        super().__init__(**kwargs)
        del self._default_c
        self.c, self.clip_r = c, clip_r
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.centers_per_class = centers_per_class
        self.la = la
        self.gamma = 1.0 / gamma  # 1/γ, as pml's SoftTripleLoss stores it (and logs it)
        self.margin = margin
        self.manifold_proxies = manifold_proxies
        _check_distance(self.distance, c)

        tangent = torch.empty(num_classes * centers_per_class, embedding_size)
        self.weight_init_func(tangent)
        if manifold_proxies:
            try:
                import geoopt
            except ImportError as error:
                raise ImportError(
                    "manifold_proxies=True needs geoopt: pip install 'pml-hyperbolic[geoopt]', or keep the default "
                    "tangent-space proxies (any torch optimizer)."
                ) from error
            self.manifold = geoopt.PoincareBall(c=c)
            with torch.no_grad():
                ball = poincare.tangent_to_ball(tangent, c, clip_r)
                self.proxies = geoopt.ManifoldParameter(ball, manifold=self.manifold)
        else:
            self.proxies = torch.nn.Parameter(tangent)

        self.add_to_recordable_attributes(
            list_of_names=["num_classes", "embedding_size", "centers_per_class", "la", "gamma", "margin"],
            is_stat=False,
        )
        if clip_r is not None:
            self.add_to_recordable_attributes(name="clip_r", is_stat=False)
        if not isinstance(c, torch.Tensor):
            self.add_to_recordable_attributes(name="c", is_stat=False)
        if centers_reg_weight > 0:
            self.add_to_recordable_attributes(name="centers_reg_weight", is_stat=False)

    def _sub_loss_names(self):
        return ["loss", "centers_reg_loss"] if self.centers_reg_weight > 0 else ["loss"]

    def get_default_distance(self):
        # No per-call input check: the loss checks the embeddings itself and the proxies are in the ball by design.
        return PoincareDistance(c=self._default_c[0], check_inputs=False)

    def get_default_weight_init_func(self):
        return self._init_tangent_proxies

    def _init_tangent_proxies(self, tangent):
        """N(0, (0.9 r)² / D) per coordinate (HIER's proxy init): tangent norms ≈ 0.9·clip_r, so the proxies
        start in the region of the clipped embeddings (norm 1 without clipping)."""
        radius = 0.9 * self.clip_r if self.clip_r is not None else 1.0
        torch.nn.init.normal_(tangent, std=radius / math.sqrt(tangent.shape[1]))

    def get_proxies(self, dtype=None):
        """The proxies as ball points, shape (C·K, D); row ``j * K + k`` is proxy k of class j.

        Computed in ``dtype`` (default: the parameter's) from the parameter, which keeps its own dtype.
        """
        u = self.proxies if dtype is None else self.proxies.to(dtype)
        if self.manifold_proxies:
            return poincare.project(u, self.c)
        return poincare.tangent_to_ball(u, self.c, self.clip_r)

    def cast_types(self, dtype, device):
        """pml's per-call hook: move the proxy parameter to ``device``. Unlike pml's ``SoftTripleLoss``, the
        parameter's dtype never changes (half-precision embeddings or autocast would otherwise turn the trainable
        proxies into float16 for good): :meth:`get_proxies` maps them in the working dtype instead."""
        if self.proxies.device != device:
            self.proxies.data = self.proxies.data.to(device)

    def get_logits(self, embeddings):
        r"""The loss's logits :math:`\lambda S` (batch_size, num_classes), without the margin: class scores."""
        self._check_embeddings(embeddings)
        self.cast_types(None, embeddings.device)
        return self.la * self._relaxed_similarity(embeddings, self.get_proxies(_work_dtype(embeddings)))

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_required(labels)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        self._check_embeddings(embeddings)
        check_labels(labels, self.num_classes)
        self.cast_types(None, embeddings.device)
        proxies = self.get_proxies(_work_dtype(embeddings))
        regularization = {}  # before the (B, K, C) buffers exist: its backward runs after theirs are freed
        if self.centers_reg_weight > 0:
            regularization["centers_reg_loss"] = self._centers_regularization(proxies)
        self.add_weight_regularization_to_loss_dict(regularization, proxies)
        sim = self._relaxed_similarity(embeddings, proxies)
        margin = torch.full_like(labels, -self.margin, dtype=sim.dtype).unsqueeze(1)
        logits = self.la * sim.scatter_add(1, labels.unsqueeze(1), margin)
        loss = F.cross_entropy(logits, labels, reduction="none")
        if indices_tuple is not None:  # pml's SoftTripleLoss weighting: a miner's share of each sample
            loss = loss * lmu.convert_to_weights(indices_tuple, labels, dtype=sim.dtype)
        loss_dict = {
            "loss": {
                "losses": loss,
                "indices": c_f.torch_arange_from_size(embeddings),
                "reduction_type": "element",
                "divisor": len(loss),
            }
        }
        return {**loss_dict, **regularization}

    def _relaxed_similarity(self, embeddings, proxies):
        # Proxy-major columns (k * C + j): the softmax over k then runs across contiguous classes.
        k, d = self.centers_per_class, proxies.shape[1]
        by_proxy = proxies.view(self.num_classes, k, d).transpose(0, 1).reshape(-1, d)
        mat = self.distance(embeddings, by_proxy).to(proxies.dtype)
        sign = 1.0 if self.distance.is_inverted else -1.0  # similarity = sign * mat
        return _RelaxedSimilarity.apply(mat.view(-1, k, self.num_classes), sign, 1.0 / self.gamma)

    def _centers_regularization(self, proxies):
        r"""Weighted :math:`d_c(p_j^t, p_j^s) = \frac{2}{\sqrt c}\operatorname{asinh}\frac{\sqrt c\,\|p_j^t - p_j^s\|}
        {\sqrt{\alpha_t\alpha_s}}` for every class j and t < s. The K×K blocks come from ``torch.cdist`` on exact
        differences (batched over classes, no C·K×C·K matrix), so merging proxies, the point of the term, get exact
        small distances and a zero gradient once merged."""
        k = self.centers_per_class
        p = proxies.view(self.num_classes, k, -1)
        euclid = torch.cdist(p, p, compute_mode="donot_use_mm_for_euclid_dist")
        t, s = torch.triu_indices(k, k, 1, device=p.device)
        c = torch.as_tensor(self.c, dtype=torch.float64, device=p.device)
        alpha = 1 - c * torch.linalg.vector_norm(p, dim=2, dtype=torch.float64).square()
        x = c.sqrt() * euclid[:, t, s] / (alpha[:, t] * alpha[:, s]).sqrt()
        d = 2 / c.sqrt() * torch.asinh(x)
        losses = (self.centers_reg_weight * d).flatten().to(proxies.dtype)
        return {
            "losses": losses,
            "indices": c_f.torch_arange_from_size(losses),
            "reduction_type": "element",
            "divisor": len(losses),
        }

    def _check_embeddings(self, embeddings):
        check_embeddings(embeddings, "embeddings", self.embedding_size)
        if embeddings.shape[0] == 0:
            raise ValueError("embeddings is an empty batch.")
        check_in_ball(embeddings, self.c, "embeddings")

class _RelaxedSimilarity(torch.autograd.Function):
    r"""Relaxed class similarity from the (B, K, C) matrix ``m`` of distances (``sign`` = -1) or similarities (+1):
    :math:`S = \sum_k p_k s_k` with :math:`s = \sigma m`, :math:`p = \operatorname{softmax}_k(s/\gamma)`.

    Backward in two passes over (B, K, C), from
    :math:`\partial S/\partial m_k = p_k\,(\sigma(1 - S/\gamma) + m_k/\gamma)` (autograd through the softmax and
    the weighted sum takes about seven). In float32 both passes run in a kernel: C on the CPU
    (``csrc/relaxed_similarity.c``), Triton on CUDA (``backends/triton_rows.py``).
    """

    @staticmethod
    def forward(ctx, m, sign, gamma):
        ctx.kind = backends.select(m)
        if ctx.kind != "torch":
            s, p = backends.row_kernels(ctx.kind).relaxed_similarity_forward(m, sign, gamma)
        else:
            with torch.autocast(device_type=m.device.type, enabled=False):
                p = torch.softmax(m * (sign / gamma), dim=1)
                s = sign * torch.linalg.vecdot(p, m, dim=1)
        ctx.save_for_backward(m, p, s)
        ctx.sign, ctx.gamma = sign, gamma
        return s

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        m, p, s = ctx.saved_tensors
        if ctx.kind != "torch":
            kernels = backends.row_kernels(ctx.kind)
            return kernels.relaxed_similarity_backward(m, s, p, ctx.sign, ctx.gamma, grad), None, None
        alpha = (ctx.sign * grad * (1 - s / ctx.gamma)).unsqueeze(1)
        beta = (grad / ctx.gamma).unsqueeze(1)
        return torch.addcmul(alpha, m, beta).mul_(p), None, None


def _work_dtype(embeddings):
    """float64 embeddings are computed in float64, everything else (float32, half types) in float32."""
    return torch.float64 if embeddings.dtype == torch.float64 else torch.float32


def _check_hyperparameters(num_classes, embedding_size, centers_per_class, la, gamma, margin, clip_r):
    for name, value in [("num_classes", num_classes), ("embedding_size", embedding_size),
                        ("centers_per_class", centers_per_class)]:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    if not la > 0:
        raise ValueError(f"la (the logit scale) must be > 0, got {la!r}.")
    if not gamma > 0:
        raise ValueError(f"gamma (the softmax temperature over a class's proxies) must be > 0, got {gamma!r}.")
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}.")
    if clip_r is not None and not clip_r > 0:
        raise ValueError(f"clip_r must be > 0 or None (no clipping), got {clip_r!r}.")


def _check_distance(distance, c):
    if not isinstance(distance, PoincareDistance):
        return
    if isinstance(c, torch.Tensor) or isinstance(distance.c, torch.Tensor):
        same = distance.c is c
    else:
        same = float(distance.c) == float(c)
    if not same:
        raise ValueError(
            f"The distance's curvature ({distance.c!r}) differs from the loss's c ({c!r}): the proxies are ball "
            "points of curvature c, so pass the same c (the same tensor, if learnable) to both."
        )
