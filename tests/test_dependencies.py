"""The core install (torch, pytorch-metric-learning, numpy, scipy) is enough for every loss, distance, layer, miner and
regularizer and a pml trainer step; optional packages are imported only where used, and a missing one names the extra
to install. Checked in a subprocess where the optional packages cannot be imported (as if not installed)."""

import subprocess
import sys
import textwrap

OPTIONAL = ["faiss", "timm", "torchvision", "record_keeper", "tensorboard", "matplotlib", "PIL", "geoopt"]

BLOCKER = textwrap.dedent(
    f"""
    import importlib.abc, sys

    class Missing(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in {OPTIONAL!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

    sys.meta_path.insert(0, Missing())
    """
)


def run(code):
    result = subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_core_install_trains_chest_with_a_pml_trainer():
    out = run(
        """
        import sys
        import torch
        from pytorch_metric_learning import trainers
        from pml_hyperbolic import poincare
        from pml_hyperbolic.distances import EuclideanHyperbolicDistance, HypMixSimilarity, PoincareDistance
        from pml_hyperbolic.layers import EuclideanHyperbolicHead, ToPoincare
        from pml_hyperbolic.losses import CHESTLoss, HIERLoss, HyperbolicSoftTripleLoss
        from pml_hyperbolic.miners import ReciprocalTripletMiner
        from pml_hyperbolic.regularizers import HypHCProxyRegularizer

        torch.manual_seed(0)
        x, y = torch.randn(64, 12), torch.arange(64) % 4
        trunk = torch.nn.Linear(12, 16)
        head = EuclideanHyperbolicHead(16, 8, 8)
        loss = CHESTLoss(4, 16, euclidean_dim=8, centers_per_class=3)
        before = [p.detach().clone() for p in loss.parameters()]
        optimizers = {f"{name}_optimizer": torch.optim.SGD(module.parameters(), lr=0.01)
                      for name, module in (("trunk", trunk), ("embedder", head), ("metric_loss", loss))}
        trainer = trainers.MetricLossOnly(
            models={"trunk": trunk, "embedder": head},
            optimizers=optimizers,
            batch_size=32, loss_funcs={"metric_loss": loss}, mining_funcs={},
            dataset=torch.utils.data.TensorDataset(x, y), dataloader_num_workers=0,
            data_device=torch.device("cpu"),
        )
        trainer.train(num_epochs=1)
        for old, new in zip(before, loss.parameters()):
            assert torch.isfinite(new).all() and not torch.equal(old, new)  # every proxy was trained
        print(sorted({m.split(".")[0] for m in sys.modules} & set(OPTIONAL_NAMES)))
        """.replace("OPTIONAL_NAMES", repr(OPTIONAL))
    )
    assert out.strip().splitlines()[-1] == "[]"  # no optional package was imported


def test_poincare_knn_without_faiss_names_the_extra():
    out = run(
        """
        import torch
        from pml_hyperbolic.utils.inference import PoincareKNN
        try:
            PoincareKNN(c=0.1)(torch.zeros(3, 2), 1, torch.zeros(3, 2), True)
        except ImportError as error:
            print(error)
        """
    )
    assert "pip install 'pml-hyperbolic[knn]'" in out


def test_manifold_proxies_without_geoopt_names_the_extra():
    out = run(
        """
        from pml_hyperbolic.losses import HyperbolicSoftTripleLoss
        try:
            HyperbolicSoftTripleLoss(4, 8, manifold_proxies=True)
        except ImportError as error:
            print(error)
        """
    )
    assert "pip install 'pml-hyperbolic[geoopt]'" in out
