"""CHESTLoss against its parts computed independently (standalone HyperbolicSoftTripleLoss, pml's SoftTripleLoss and
the regularizer, HIERLoss or HypHCProxyRegularizer, holding the same parameters, fed the same slices, triplets and
random numbers), and inside pml's machinery: reducers, miners, the MetricLossOnly trainer, record-keeper, autocast,
state dicts."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import miners, reducers, trainers
from pytorch_metric_learning.losses import SoftTripleLoss
from pytorch_metric_learning.regularizers import LpRegularizer, SparseCentersRegularizer
from pytorch_metric_learning.utils import common_functions as pml_cf
from pytorch_metric_learning.utils.inference import CustomKNN

from pml_hyperbolic.distances import EuclideanHyperbolicDistance, PoincareDistance
from pml_hyperbolic.layers import EuclideanHyperbolicHead, ToPoincare
from pml_hyperbolic.losses import CHESTLoss, HIERLoss, HyperbolicSoftTripleLoss
from pml_hyperbolic.losses.chest_loss import EUCLIDEAN_DEFAULTS as CHEST_EUC
from pml_hyperbolic.losses.chest_loss import HYPERBOLIC_DEFAULTS as CHEST_HYP
from pml_hyperbolic.losses.chest_loss import HYPHC_DEFAULTS
from pml_hyperbolic.regularizers import HypHCProxyRegularizer

C, CLIP = 0.1, 2.3
NUM_CLASSES, K, D_E, D_H = 4, 3, 5, 6
HIER_KW = dict(num_proxies=12, topk=5, triplets_per_anchor=4)
HYPHC_KW = dict(triplets_per_anchor=3)
WEIGHTS = dict(hyperbolic_weight=0.7, euclidean_weight=1.3, regularizer_weight=0.4)
REGULARIZER_KW = {"hier": HIER_KW, "hyphc": HYPHC_KW}


@pytest.fixture(autouse=True)
def one_thread():
    """The tensors here are tiny: one intra-op thread avoids thread synchronisation on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def embeddings(n, layout, seed, dtype=torch.float64):
    """Layout (a): ball points of width D_H; layout (b): [unit vector (D_E) | ball point (D_H)]."""
    g = torch.Generator().manual_seed(seed)
    ball = ToPoincare(c=C, clip_r=CLIP)(torch.randn(n, D_H, generator=g, dtype=dtype) * 1.5)
    if layout == "a":
        return ball
    return torch.cat([F.normalize(torch.randn(n, D_E, generator=g, dtype=dtype), dim=1), ball], dim=1)


def labels_for(n):
    return torch.arange(n) % NUM_CLASSES


def make_chest(layout, regularizer="hier", **kwargs):
    kwargs = {"regularizer_kwargs": dict(REGULARIZER_KW[regularizer or "hier"], generator=3), **WEIGHTS, **kwargs}
    width = D_H if layout == "a" else D_E + D_H
    return CHESTLoss(NUM_CLASSES, width, euclidean_dim=None if layout == "a" else D_E, centers_per_class=K,
                     regularizer=regularizer, **kwargs)


def standalone_parts(chest, hyperbolic_kwargs=None, euclidean_kwargs=None, regularizer_kwargs=None):
    """Fresh part losses built from the documented defaults, holding copies of ``chest``'s part parameters (the
    regularizer under its name, "hier" or "hyphc")."""
    d_e = chest.euclidean_dim or chest.embedding_size
    hyp = HyperbolicSoftTripleLoss(NUM_CLASSES, D_H, K, c=C, clip_r=CLIP, **{**CHEST_HYP, **(hyperbolic_kwargs or {})})
    euc = SoftTripleLoss(NUM_CLASSES, d_e, K, **{**CHEST_EUC, **(euclidean_kwargs or {})})
    parts = {"hyperbolic": hyp, "euclidean": euc}
    modules = {"hyperbolic": chest.hyperbolic_loss, "euclidean": chest.euclidean_loss}
    if chest.regularizer_name == "hier":
        parts["hier"] = HIERLoss(D_H, c=C, clip_r=CLIP, **{**HIER_KW, "generator": 3, **(regularizer_kwargs or {})})
    elif chest.regularizer_name == "hyphc":
        options = {**HYPHC_DEFAULTS, **HYPHC_KW, "generator": 3, **(regularizer_kwargs or {})}
        options["similarity"] = "euclidean"  # "class_means": the reference passes the class means as Euclidean proxies
        parts["hyphc"] = HypHCProxyRegularizer(NUM_CLASSES, K, **options)
        parts["hyphc"].class_means_mode = chest.class_means is not None
    modules[chest.regularizer_name] = chest.regularizer
    for name, part in parts.items():
        part.load_state_dict(modules[name].state_dict())
    return {name: part.to(chest.hyperbolic_loss.proxies.dtype) for name, part in parts.items()}


def split(x, layout):
    return (x, x) if layout == "a" else (x[:, :D_E], x[:, D_E:])


def class_means_of(z_e, y):
    """The first batch's running class means, written plainly: the mean of each class's normalised Euclidean rows."""
    z = F.normalize(z_e.detach(), dim=1)
    return torch.stack([z[y == c].mean(0) if (y == c).any() else torch.zeros(z.shape[1], dtype=z.dtype)
                        for c in range(NUM_CLASSES)])


def hyphc_similarity_rows(parts, z_e, y):
    """What CHEST passes to HypHC as Euclidean proxies: the class means, or pml's SoftTriple proxies."""
    return class_means_of(z_e, y) if parts["hyphc"].class_means_mode else parts["euclidean"].fc.t()


def reference_value(parts, x, y, layout, class_proxies=False, indices_tuple=None):
    """Σ weight · part(slice) with each part's own forward (its default MeanReducer)."""
    z_e, z_h = split(x, layout)
    value = (WEIGHTS["hyperbolic_weight"] * parts["hyperbolic"](z_h, y, indices_tuple)
             + WEIGHTS["euclidean_weight"] * parts["euclidean"](z_e, y, indices_tuple))
    if "hyphc" in parts:
        proxies = parts["hyperbolic"].get_proxies()
        return value + WEIGHTS["regularizer_weight"] * parts["hyphc"](proxies, y, hyphc_similarity_rows(parts, z_e, y))
    points, point_labels = z_h, y
    if class_proxies:
        classes = torch.unique(y)
        rows = (classes[:, None] * K + torch.arange(K)).flatten()
        points = torch.cat([z_h, parts["hyperbolic"].get_proxies()[rows]])
        point_labels = torch.cat([y, classes.repeat_interleave(K)])
    return value + WEIGHTS["regularizer_weight"] * parts["hier"](points, point_labels, indices_tuple)


# --------------------------------------------------------------------------------------- the sum of the parts


@pytest.mark.parametrize("layout", ["a", "b"])
@pytest.mark.parametrize("regularizer, class_proxies, option", [
    ("hier", False, dict(lca="gumbel")), ("hier", True, dict(lca="gumbel")), ("hier", False, dict(lca="argmax")),
    ("hier", True, dict(lca="argmax")), ("hyphc", False, dict(dtype=torch.float64)),
    ("hyphc", False, dict(dtype=torch.float64, similarity="euclidean")),
    ("hyphc", False, dict(leaves="proxies", dtype=torch.float64)),
])  # fmt: skip
def test_equals_weighted_sum_of_independent_parts(layout, regularizer, class_proxies, option):
    """Values and gradients (embeddings and every proxy) of CHEST = Σ weight · standalone part, float64."""
    torch.manual_seed(0)
    part_kwargs = dict(
        hyperbolic_kwargs=dict(la=8.0, centers_reg_weight=0.1),
        euclidean_kwargs=dict(la=10, weight_regularizer=SparseCentersRegularizer(NUM_CLASSES, K)),
        regularizer_kwargs=option,
    )
    chest = make_chest(layout, regularizer, hier_class_proxies=class_proxies, **{
        k: ({**REGULARIZER_KW[regularizer], "generator": 3, **v} if k == "regularizer_kwargs" else v)
        for k, v in part_kwargs.items()
    }).double()  # fmt: skip
    parts = standalone_parts(chest, **part_kwargs)
    x = embeddings(24, layout, seed=1).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y = labels_for(24)

    value = chest(x, y)
    expected = reference_value(parts, x_ref, y, layout, class_proxies)
    value.backward()
    expected.backward()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    modules = {"hyperbolic": chest.hyperbolic_loss, "euclidean": chest.euclidean_loss, regularizer: chest.regularizer}
    for name, part in parts.items():
        for (pname, p), q in zip(modules[name].named_parameters(), part.parameters()):
            assert p.grad.abs().sum() > 0, f"{name}.{pname} got no gradient"
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)
    terms = ["hier_data_loss", "hier_proxy_loss"] if regularizer == "hier" else ["hyphc_loss"]
    assert chest.sub_loss_names() == [
        "hyperbolic_loss", "hyperbolic_centers_reg_loss", "euclidean_loss", "euclidean_weight_reg_loss", *terms,
    ]  # fmt: skip


def test_class_proxies_join_hier_and_change_the_loss():
    torch.manual_seed(0)
    x, y = embeddings(24, "b", seed=2), labels_for(24)
    plain = make_chest("b", reducer=reducers.DoNothingReducer(),
                       regularizer_kwargs=dict(HIER_KW, lca="argmax", generator=0))
    with_proxies = make_chest("b", reducer=reducers.DoNothingReducer(), hier_class_proxies=True,
                              regularizer_kwargs=dict(HIER_KW, lca="argmax", generator=0))  # fmt: skip
    with_proxies.load_state_dict(plain.state_dict())
    with_proxies.double(), plain.double()
    a, p, n = with_proxies(x, y)["hier_data_loss"]["indices"]
    assert (torch.cat([a, p, n]) >= 24).any(), "no triplet touches a class proxy"
    assert plain(x, y)["hier_data_loss"]["losses"].shape != with_proxies(x, y)["hier_data_loss"]["losses"].shape


def test_miner_indices_tuple_reaches_every_part():
    """A pml miner's triplets weight both SoftTriple parts and replace HIER's mining of its data term."""
    torch.manual_seed(0)
    chest = make_chest("b", regularizer_kwargs=dict(HIER_KW, lca="argmax", generator=3)).double()
    parts = standalone_parts(chest, regularizer_kwargs=dict(lca="argmax"))
    x, y = embeddings(24, "b", seed=3), labels_for(24)
    miner = miners.TripletMarginMiner(margin=0.5, distance=EuclideanHyperbolicDistance(D_E, c=C))
    tuples = miner(x, y)
    keep = (torch.stack(tuples) < 16).all(0)  # leave samples 16..23 out
    tuples = tuple(t[keep] for t in tuples)
    assert len(tuples[0]) > 0
    value = chest(x, y, tuples)
    torch.testing.assert_close(value, reference_value(parts, x, y, "b", indices_tuple=tuples), rtol=1e-12, atol=1e-12)
    assert not torch.isclose(value, chest(x, y))  # the tuples change the value

    terms = make_chest("b", reducer=reducers.DoNothingReducer(),
                       regularizer_kwargs=dict(HIER_KW, generator=0))(x.float(), y, tuples)
    assert torch.equal(torch.stack(terms["hier_data_loss"]["indices"]), torch.stack(tuples))
    weights = pml_cf.torch_arange_from_size(x)  # samples outside the tuples have loss 0 in both SoftTriple parts
    outside = ~torch.isin(weights, torch.cat(tuples))
    assert (terms["hyperbolic_loss"]["losses"][outside] == 0).all()
    assert (terms["euclidean_loss"]["losses"][outside] == 0).all()


# ---------------------------------------------------------------------------------------------------- reducers


def part_terms(parts, x, y, layout):
    """The parts' raw weighted loss terms (DoNothingReducer), from the standalone parts."""
    z_e, z_h = split(x, layout)
    out = {}
    for name, part in parts.items():
        part.reducer = reducers.DoNothingReducer()
        if name == "hyphc":
            terms = part(parts["hyperbolic"].get_proxies(), y, hyphc_similarity_rows(parts, z_e, y))
        else:
            terms = part(z_e if name == "euclidean" else z_h, y)
        weight = WEIGHTS["regularizer_weight" if name in ("hier", "hyphc") else f"{name}_weight"]
        for sub, entry in terms.items():
            out[f"{name}_{sub}"] = weight * entry["losses"]
    return out


REDUCERS = {
    "mean": (reducers.MeanReducer(), lambda t: t.mean()),
    "avg_non_zero": (reducers.AvgNonZeroReducer(), lambda t: t[t > 0].mean() if (t > 0).any() else t.sum() * 0),
    "threshold": (reducers.ThresholdReducer(low=0.05, high=20.0), lambda t: t[(t > 0.05) & (t < 20)].mean()),
    "divisor": (reducers.DivisorReducer(), lambda t: t.sum() / len(t)),
    "sum": (reducers.SumReducer(), lambda t: t.sum()),
}


@pytest.mark.parametrize("regularizer", ["hier", "hyphc"])
@pytest.mark.parametrize("name", list(REDUCERS))
def test_each_pml_reducer_reduces_each_weighted_part(name, regularizer):
    """reducer(CHEST) = Σ over sub-losses of the reduction (written out here) of weight · the part's losses."""
    reducer, reduce = REDUCERS[name]
    option = dict(lca="argmax") if regularizer == "hier" else dict(dtype=torch.float64)
    chest = make_chest("b", regularizer, reducer=reducer,
                       regularizer_kwargs=dict(REGULARIZER_KW[regularizer], generator=5, **option)).double()
    parts = standalone_parts(chest, regularizer_kwargs=dict(generator=5, **option))
    x, y = embeddings(24, "b", seed=4), labels_for(24)
    terms = part_terms(parts, x, y, "b")
    assert set(terms) == set(chest.sub_loss_names())
    expected = sum(reduce(t) for t in terms.values())
    torch.testing.assert_close(chest(x, y), expected, rtol=1e-12, atol=1e-12)


def test_multiple_reducers_and_do_nothing_reducer():
    reducer = reducers.MultipleReducers({"hier_data_loss": reducers.SumReducer()},
                                        default_reducer=reducers.MeanReducer())
    chest = make_chest("b", reducer=reducer, regularizer_kwargs=dict(HIER_KW, lca="argmax", generator=5)).double()
    parts = standalone_parts(chest, regularizer_kwargs=dict(lca="argmax", generator=5))
    x, y = embeddings(24, "b", seed=4), labels_for(24)
    terms = part_terms(parts, x, y, "b")
    expected = sum(t.sum() if k == "hier_data_loss" else t.mean() for k, t in terms.items())
    torch.testing.assert_close(chest(x, y), expected, rtol=1e-12, atol=1e-12)

    nothing = make_chest("b", reducer=reducers.DoNothingReducer(),
                         regularizer_kwargs=dict(HIER_KW, lca="argmax", generator=5))
    nothing.double().load_state_dict(chest.state_dict())
    out = nothing(x, y)
    assert list(out) == nothing.sub_loss_names()
    for k, entry in out.items():
        assert entry["divisor"] == len(entry["losses"])  # also for pml's SoftTripleLoss, which gives none
        torch.testing.assert_close(entry["losses"], terms[k], rtol=1e-12, atol=1e-12)


def test_embedding_regularizers_of_chest_and_of_a_part():
    """CHEST's embedding regularizer sees the whole embeddings, a part's its own slice."""
    x, y = embeddings(16, "b", seed=6), labels_for(16)
    chest = make_chest("b", embedding_regularizer=LpRegularizer(), embedding_reg_weight=0.3,
                       euclidean_kwargs=dict(embedding_regularizer=LpRegularizer()),
                       reducer=reducers.DoNothingReducer()).double()  # fmt: skip
    out = chest(x, y)
    assert chest.sub_loss_names()[-1] == "embedding_reg_loss" and "euclidean_embedding_reg_loss" in out
    torch.testing.assert_close(out["embedding_reg_loss"]["losses"], 0.3 * x.norm(dim=1).mean())
    torch.testing.assert_close(out["euclidean_embedding_reg_loss"]["losses"], 1.3 * x[:, :D_E].norm(dim=1).mean())


# ------------------------------------------------------------------------------------------ parts and options


@pytest.mark.parametrize("off", ["hyperbolic", "euclidean", "regularizer"])
def test_parts_switch_off(off):
    weight = {f"{off}_weight": 0.0}
    chest = make_chest("b", **weight, regularizer_kwargs=dict(HIER_KW, lca="argmax", generator=5)).double()
    attribute = off if off == "regularizer" else f"{off}_loss"
    prefix = "hier" if off == "regularizer" else off
    assert getattr(chest, attribute) is None
    assert not any(n.startswith(prefix) for n in chest.sub_loss_names())
    assert not any(n.startswith(f"{attribute}.") for n, _ in chest.named_parameters())
    parts = standalone_parts(make_chest("b").double(), regularizer_kwargs=dict(lca="argmax", generator=5))
    modules = {"hyperbolic": chest.hyperbolic_loss, "euclidean": chest.euclidean_loss, "hier": chest.regularizer}
    for name, module in modules.items():
        if module is not None:
            parts[name].load_state_dict(module.state_dict())
    x, y = embeddings(24, "b", seed=7), labels_for(24)
    terms = part_terms(parts, x, y, "b")
    expected = sum(t.mean() for k, t in terms.items() if not k.startswith(prefix))
    torch.testing.assert_close(chest(x, y), expected, rtol=1e-12, atol=1e-12)


def test_layout_a_feeds_the_same_ball_points_to_every_part():
    chest = make_chest("a", reducer=reducers.DoNothingReducer()).double()
    assert chest.euclidean_loss.fc.shape == (D_H, NUM_CLASSES * K) and chest.regularizer.embedding_size == D_H
    x, y = embeddings(20, "a", seed=8), labels_for(20)
    euclidean = chest(x, y)["euclidean_loss"]["losses"]
    # pml's SoftTripleLoss sees the ball points through cosine similarity: scaling them changes nothing
    torch.testing.assert_close(euclidean, chest(0.5 * x, y)["euclidean_loss"]["losses"])
    assert isinstance(chest.distance, PoincareDistance)


def test_get_logits_combines_the_softtriple_parts():
    chest = make_chest("b").double()
    parts = standalone_parts(chest)
    x = embeddings(10, "b", seed=9)
    expected = (  # HyperbolicSoftTripleLoss's logits are scaled (la S), pml SoftTripleLoss's are S
        WEIGHTS["hyperbolic_weight"] * parts["hyperbolic"].get_logits(x[:, D_E:])
        + WEIGHTS["euclidean_weight"] * CHEST_EUC["la"] * parts["euclidean"].get_logits(x[:, :D_E])
    )
    torch.testing.assert_close(parts["hyperbolic"].get_logits(x[:, D_E:]) / CHEST_HYP["la"],
                               parts["hyperbolic"].get_logits(x[:, D_E:].float()).double() / CHEST_HYP["la"],
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chest.get_logits(x), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="SoftTriple part"):
        make_chest("b", hyperbolic_weight=0, euclidean_weight=0).get_logits(x.float())


def test_evaluation_distance_reads_both_spaces():
    chest = make_chest("b")
    assert isinstance(chest.distance, EuclideanHyperbolicDistance) and chest.distance.space == "both"
    x = embeddings(20, "b", seed=10, dtype=torch.float32)
    distances, indices = CustomKNN(chest.distance)(x, 3, x, False)
    assert torch.equal(indices[:, 0], torch.arange(20)) and (distances[:, 1:] >= distances[:, :1]).all()


# ------------------------------------------------------------------------------------------ pml machinery


def clustered_data(n=96, classes=NUM_CLASSES, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 3
    y = torch.arange(n) % classes
    return centers[y] + torch.randn(n, dim, generator=g), y


TRAINER_CASES = {
    "default": {},
    "miner": {"miner": True},
    **{f"reducer={name}": {"reducer": r} for name, (r, _) in REDUCERS.items() if name != "threshold"},
    "reducer=threshold": {"reducer": reducers.ThresholdReducer(low=0.05)},
    "reducer=multiple": {"reducer": reducers.MultipleReducers({"hier_data_loss": reducers.SumReducer()})},
}


@pytest.mark.parametrize("case", list(TRAINER_CASES))
def test_metric_loss_only_trainer(case):
    """A few MetricLossOnly iterations: the loss on the data goes down and every proxy parameter gets non-zero
    gradients (at some iteration: a ThresholdReducer may drop a part once its losses are small)."""
    options = TRAINER_CASES[case]
    torch.manual_seed(0)
    x, y = clustered_data()
    trunk = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU())
    embedder = EuclideanHyperbolicHead(16, D_E, D_H, c=C, clip_r=CLIP)
    reducer = options.get("reducer")
    loss = make_chest("b", reducer=None if reducer is None else copy.deepcopy(reducer),
                      regularizer_kwargs=dict(HIER_KW, generator=0))  # fmt: skip
    mining = {}
    if options.get("miner"):
        mining = {"tuple_miner": miners.MultiSimilarityMiner(epsilon=0.1, distance=loss.distance)}

    def loss_value():
        """The default CHEST objective on all the data, deterministic (argmax LCAs, seeded mining)."""
        evaluation = make_chest("b", regularizer_kwargs=dict(HIER_KW, lca="argmax", generator=0))
        evaluation.load_state_dict(loss.state_dict())
        with torch.no_grad():
            return evaluation(embedder(trunk(x)), y).item()

    before = loss_value()
    got_gradient = set()

    def record_gradients(trainer):
        got_gradient.update(n for n, p in loss.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0)

    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk, "embedder": embedder},
        optimizers={
            "trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=1e-2),
            "embedder_optimizer": torch.optim.Adam(embedder.parameters(), lr=1e-2),
            "metric_loss_optimizer": torch.optim.Adam(loss.parameters(), lr=1e-2),
        },
        batch_size=24,
        loss_funcs={"metric_loss": loss},
        mining_funcs=mining,
        dataset=torch.utils.data.TensorDataset(x, y),
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),  # pml's default is the GPU when there is one; the models are on the CPU
        end_of_iteration_hook=record_gradients,
    )
    trainer.train(num_epochs=3)
    after = loss_value()
    assert math.isfinite(after) and after < 0.7 * before, (before, after)
    assert got_gradient == {"hyperbolic_loss.proxies", "euclidean_loss.fc", "regularizer.proxies"}
    for p in loss.parameters():
        assert p.dtype == torch.float32 and torch.isfinite(p).all()


def test_record_keeper_sees_every_sub_loss(tmp_path):
    record_keeper = pytest.importorskip("record_keeper")
    chest = make_chest("b", collect_stats=True, reducer=reducers.AvgNonZeroReducer(collect_stats=True),
                       regularizer_kwargs=HIER_KW)
    x, y = embeddings(24, "b", seed=11, dtype=torch.float32), labels_for(24)
    chest(x, y)
    keeper = record_keeper.RecordKeeper(
        record_writer=record_keeper.RecordWriter(str(tmp_path)),
        attributes_to_search_for=pml_cf.list_of_recordable_attributes_list_names(),
    )
    keeper.update_records({"metric_loss": chest}, 0, recursive_types=[torch.nn.Module, dict])
    groups = "\n".join(keeper.record_writer.records)
    for name in chest.sub_loss_names():
        assert f"_{name}_AvgNonZeroReducer" in groups, name  # one reducer, with its stats, per sub-loss
    assert any(group.endswith("_regularizer_HIERLoss") for group in keeper.record_writer.records)
    hier = next(v for k, v in keeper.record_writer.records.items() if k.endswith("_regularizer_HIERLoss"))
    assert "num_data_triplets" in hier and "regularizer_weight" in keeper.record_writer.records["metric_loss_CHESTLoss"]


def test_autocast_bfloat16_keeps_float32_proxies():
    torch.manual_seed(0)
    head = EuclideanHyperbolicHead(12, D_E, D_H, c=C, clip_r=CLIP)
    chest = make_chest("b", hier_class_proxies=True)
    x, y = clustered_data(24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = chest(head(x), y)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    for name, p in list(chest.named_parameters()) + list(head.named_parameters()):
        assert p.dtype == torch.float32, name
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # the same loss (up to bfloat16 rounding of the head) as in float32
    with torch.no_grad():
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emb16 = head(x)
        chest_f = make_chest("b", regularizer=None)
        chest_f.hyperbolic_loss.load_state_dict(chest.hyperbolic_loss.state_dict())
        chest_f.euclidean_loss.load_state_dict(chest.euclidean_loss.state_dict())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under = chest_f(emb16, y)
        torch.testing.assert_close(under, chest_f(emb16.float(), y))


def test_state_dict_round_trip():
    a = make_chest("b", hier_class_proxies=True, regularizer_kwargs=dict(HIER_KW, generator=9))
    b = make_chest("b", hier_class_proxies=True, regularizer_kwargs=dict(HIER_KW, generator=9))
    assert set(a.state_dict()) == {"hyperbolic_loss.proxies", "euclidean_loss.fc", "regularizer.proxies"}
    assert not torch.equal(a.euclidean_loss.fc, b.euclidean_loss.fc)
    b.load_state_dict(a.state_dict())
    x, y = embeddings(24, "b", seed=12, dtype=torch.float32), labels_for(24)
    assert a(x, y).item() == b(x, y).item()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(euclidean_dim=D_E + D_H), "euclidean_dim"),
        (dict(euclidean_dim=0), "euclidean_dim"),
        (dict(regularizer_weight=-1.0), "regularizer_weight"),
        (dict(euclidean_weight=float("nan")), "euclidean_weight"),
        (dict(hyperbolic_weight=0, euclidean_weight=0, regularizer_weight=0), "At least one"),
        (dict(regularizer="hier", hyperbolic_weight=0, hier_class_proxies=True), "hier_class_proxies"),
        (dict(regularizer="hyphc", hier_class_proxies=True), "hier_class_proxies"),
        (dict(regularizer="hyphc", hyperbolic_weight=0), "hyperbolic proxies"),
        (dict(regularizer="hyperbolic clustering"), "regularizer must be"),
        (dict(distance=PoincareDistance()), "no distance argument"),
        (dict(regularizer_kwargs=dict(reducer=reducers.SumReducer())), "without 'reducer'"),
    ],
)
def test_bad_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CHESTLoss(NUM_CLASSES, D_E + D_H, **{"euclidean_dim": D_E, **kwargs})


def test_bad_inputs():
    chest = make_chest("b")
    x, y = embeddings(8, "b", seed=13, dtype=torch.float32), labels_for(8)
    with pytest.raises(ValueError, match="width"):
        chest(x[:, 1:], y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes=4\)"):
        chest(x, y + 1)
    with pytest.raises(ValueError, match="integer"):
        chest(x, y.float())
    with pytest.raises(ValueError, match=r"inside the Poincaré ball"):
        chest(torch.cat([x[:, :D_E], 10 * x[:, D_E:]], dim=1), y)
    with pytest.raises(ValueError, match="labels"):
        chest(x)
    with pytest.raises(ValueError):
        chest(x, y, ref_emb=x.clone(), ref_labels=y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    # A seeded generator draws different streams on CPU and on CUDA: both copies mine HIER's triplets on the CPU
    # from the same seed, so that the comparison is about the CUDA arithmetic (values and gradients).
    cpu_loss = make_chest("b", regularizer_kwargs=dict(HIER_KW, lca="argmax", generator=0))
    gpu_loss = copy.deepcopy(cpu_loss).cuda()
    miner, mine = gpu_loss.regularizer.miner, gpu_loss.regularizer.miner.mine_fixed
    miner.mine_fixed = lambda sim, labels=None: tuple(
        t.cuda() for t in mine(sim.cpu(), None if labels is None else labels.cpu())
    )
    x, y = embeddings(24, "b", seed=14, dtype=torch.float32), labels_for(24)
    x_cpu, x_gpu = x.clone().requires_grad_(), x.cuda().requires_grad_()
    cpu, gpu = cpu_loss(x_cpu, y), gpu_loss(x_gpu, y.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
    cpu.backward()
    gpu.backward()
    pairs = [("embeddings", x_gpu, x_cpu)] + [
        (name, p_gpu, p_cpu) for (name, p_cpu), p_gpu in zip(cpu_loss.named_parameters(), gpu_loss.parameters())
    ]
    for name, p_gpu, p_cpu in pairs:  # float32 sums in two orders: tolerance relative to the largest entry
        atol = 1e-5 * p_cpu.grad.abs().max().item()
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, rtol=1e-4, atol=atol, msg=name)


def test_hyphc_class_means_follow_the_batches():
    """similarity="class_means": a class's first batch sets its mean, later ones move it with momentum 0.9; classes
    absent from a batch keep theirs; the buffer is in the state dict (checkpoints resume it)."""
    chest = make_chest("b", "hyphc", regularizer_kwargs=dict(HYPHC_KW, generator=0))
    assert chest.regularizer_weight == WEIGHTS["regularizer_weight"] and "class_means" in chest.state_dict()
    x1, x2 = embeddings(16, "b", seed=20, dtype=torch.float32), embeddings(16, "b", seed=21, dtype=torch.float32)
    y1, y2 = labels_for(16), torch.tensor([0, 1] * 8)  # classes 2 and 3 only in the first batch
    chest(x1, y1)
    first = class_means_of(x1[:, :D_E], y1).float()
    torch.testing.assert_close(chest.class_means, first)
    chest(x2, y2)
    expected = first.clone()
    expected[:2] = 0.9 * first[:2] + 0.1 * class_means_of(x2[:, :D_E], y2).float()[:2]
    torch.testing.assert_close(chest.class_means, expected)
    default = CHESTLoss(4, 11, euclidean_dim=5)
    assert default.regularizer_name == "hyphc" and default.regularizer_weight == 3.0  # the selected default
    assert default.class_means is not None and default.regularizer.temperature == 0.5
