"""Presets: the published training recipes as command-line defaults (``--preset NAME``; explicit flags win).

HIER (Kim et al., CVPR 2023; the official code's training scripts): Proxy-Anchor + 0.5·HIER, AdamW,
batch 180 with 2 images per class, fp16, gradient values clamped to ±10, Proxy-Anchor proxies at 10⁴× and HIER
proxies at 50× the learning rate, the backbone frozen (learning rate 0) during the warm-up epochs, ResNet-50
BatchNorm frozen, ViT patch embedding frozen.

Hyp-ViT (Ermolov et al., CVPR 2022; ``hyperbolic_anchors.md`` §1): SupCon on −d/0.2 in the ball, AdamW
(weight decay 0.01), batch 900, gradient norm clipped to 3, fp16, patch embedding frozen; an epoch shows every
training class once (``--samples-per-epoch classes``).
"""

DATASETS = ("cub", "cars", "sop", "inshop")

HIER_BACKBONES = {
    # name: (timm model, embedding size, {dataset: lr}, head lr scale on SOP / In-Shop)
    "resnet50": ("resnet50", 512, {"cub": 1e-4, "cars": 1e-4, "sop": 6e-4, "inshop": 6e-4}, 1),
    "deit": ("deit_small_distilled_patch16_224", 128, {d: 1e-5 for d in DATASETS}, 100),
    "vit": ("vit_small_patch16_224.augreg_in21k", 128, {d: 1e-5 for d in DATASETS}, 100),
    "dino": ("vit_small_patch16_224.dino", 128, {d: 5e-6 for d in DATASETS}, 100),
}
HIER_SCHEDULE = {
    # dataset: (epochs, warm-up epochs, weight decay, ResNet-50 step: (every, gamma))
    "cub": (100, 1, 1e-2, (5, 0.5)),
    "cars": (100, 1, 1e-2, (10, 0.5)),
    "sop": (150, 5, 1e-4, (25, 0.3)),
    "inshop": (150, 5, 1e-4, (20, 0.3)),
}
HYP_BACKBONES = {
    "vit": ("vit_small_patch16_224.augreg_in21k", 3e-5),
    "deit": ("deit_small_distilled_patch16_224", 3e-5),
    "dino": ("vit_small_patch16_224.dino", 1e-5),
}
HYP_DATASETS = {
    # dataset: (epochs, images per class, batch size)
    "cub": (50, 9, 900),
    "cars": (300, 9, 882),
    "sop": (200, 2, 900),
    "inshop": (400, 2, 900),
}


def _hier(backbone, dataset):
    model, emb, lrs, head_scale = HIER_BACKBONES[backbone]
    epochs, warmup, wd, (step, gamma) = HIER_SCHEDULE[dataset]
    resnet = backbone == "resnet50"
    return {
        "dataset": dataset,
        "loss": "proxy_anchor+hier",
        "backbone": model,
        "global_pool": "avgmax" if resnet else None,
        "embedding_size": emb,
        "lr": lrs[dataset],
        "head_lr_scale": head_scale if dataset in ("sop", "inshop") else 1,
        "proxy_lr_scale": 1e4,
        "hier_lr_scale": 50,
        "hier_weight": 0.5,
        "hier_proxies": 512,
        "hier_topk": 20,
        "weight_decay": wd,
        "epochs": epochs,
        "warmup_epochs": warmup,
        "lr_schedule": "step" if resnet else "constant",
        "lr_step_epochs": step,
        "lr_gamma": gamma,
        "batch_size": 180,
        "m_per_class": 2,
        "amp": True,
        "adam_eps": 1e-4,
        "grad_clip_value": 10.0,
        "freeze_bn": resnet,
        "freeze_patch_embed": not resnet,
        "crop_min_scale": 0.08 if resnet else 0.2,
    }


def _hyp(backbone, dataset):
    model, lr = HYP_BACKBONES[backbone]
    epochs, m, batch = HYP_DATASETS[dataset]
    return {
        "dataset": dataset,
        "loss": "hyperbolic_contrastive",
        "backbone": model,
        "embedding_size": 128,
        "temperature": 0.2,
        "lr": lr,
        "weight_decay": 0.01,
        "epochs": epochs,
        "batch_size": batch,
        "m_per_class": m,
        "samples_per_epoch": "classes",
        "amp": True,
        "grad_clip_norm": 3.0,
        "freeze_patch_embed": True,
        "crop_min_scale": 0.2,
    }


PRESETS = {
    **{f"hier_{b}_{d}": _hier(b, d) for b in HIER_BACKBONES for d in DATASETS},
    **{f"hyp_{b}_{d}": _hyp(b, d) for b in HYP_BACKBONES for d in DATASETS},
}
