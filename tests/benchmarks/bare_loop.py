"""The plain PyTorch loop the whole-process benchmark compares Freezer with.

What a careful user writes by hand for the same job: torchvision's ImageFolder with the
model's resize + center crop + normalize, a seeded shuffling DataLoader, a timm model with the
chosen top-level layers frozen (requires_grad False, their BatchNorm layers held in eval),
AdamW over the trainable parameters only (no weight decay on norms and biases), one
validation pass per epoch, and the final weights saved. Run as its own process:

    python tests/benchmarks/bare_loop.py --data DIR --out weights.pt [options]
"""

from __future__ import annotations

import argparse
import json
import time

import timm
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="a folder with train/ and val/")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--freeze", nargs="*", default=["conv1", "bn1", "layer1"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--fused", action="store_true", help="AdamW(fused=True), not torch's default kernel"
    )
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = timm.create_model(args.model, pretrained=False, num_classes=10)
    cfg = timm.data.resolve_data_config({}, model=model)
    size = args.image_size
    tf = T.Compose(
        [
            T.Resize(int(size / cfg["crop_pct"])),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(cfg["mean"], cfg["std"]),
        ]
    )
    train_ds = datasets.ImageFolder(f"{args.data}/train", tf)
    val_ds = datasets.ImageFolder(f"{args.data}/val", tf)
    model.reset_classifier(len(train_ds.classes))
    device = torch.device(args.device)
    model.to(device)
    cuda = device.type == "cuda"
    extra = {"persistent_workers": True} if args.workers else {}
    train = DataLoader(
        train_ds,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=cuda,
        generator=torch.Generator().manual_seed(args.seed),
        **extra,
    )
    val = DataLoader(
        val_ds, batch_size=args.batch_size * 2, num_workers=args.workers, pin_memory=cuda, **extra
    )

    frozen = [model.get_submodule(name) for name in args.freeze]
    for module in frozen:
        module.requires_grad_(False)
    norms = [
        m for f in frozen for m in f.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
    ]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": args.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=args.lr,
        **({"fused": True} if args.fused else {}),
    )
    criterion = nn.CrossEntropyLoss()
    started = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        for norm in norms:
            norm.eval()
        total, count = 0.0, 0
        for x, y in train:
            x, y = x.to(device, non_blocking=cuda), y.to(device, non_blocking=cuda)
            opt.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            opt.step()
            total += loss.item()
            count += 1
        model.eval()
        correct = seen = 0
        with torch.no_grad():
            for x, y in val:
                x, y = x.to(device), y.to(device)
                correct += int((model(x).argmax(1) == y).sum())
                seen += len(y)
        print(f"epoch {epoch + 1}: loss {total / count:.4f}, val acc {correct / seen:.4f}")
    torch.save(model.state_dict(), args.out)
    print(f"trained in {time.perf_counter() - started:.1f} s")
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    print("RESULT " + json.dumps({"peak_device_memory": peak}))


if __name__ == "__main__":
    main()
