"""Run folders and paper checkpoints made by hand (no training), for the tests of the readers."""
import json
import os
from dataclasses import asdict

import torch

from fastnas.genotypes import DARTS_V2
from fastnas.reports.alphas import AlphaHistory, darts_panels


def search_metrics(dataset="digits", epochs=2):
    return {"method": "darts", "dataset": dataset, "complete": True, "epochs": epochs,
            "genotype": str(DARTS_V2), "config": {"num_nodes": 4}, "seconds": 1.0,
            "history": [{"epoch": e, "lr": 0.025, "train_loss": 2.0 - e / 10, "train_acc": 0.3,
                         "val_loss": 2.1, "val_acc": 0.25, "seconds": 0.5}
                        for e in range(epochs)]}


def alphas_data(epochs=2):
    panels = darts_panels(4)
    weights = [[[1 / 8] * 8 for _ in panels] for _ in range(epochs)]
    return {"format": 1, "method": "darts", "what": "softmax of the alphas per edge",
            "panels": [dict(asdict(p), options=list(p.options)) for p in panels],
            "epochs": list(range(epochs)), "weights": weights}


def write_search_folder(folder, metrics=None, alphas=None, genotype=None):
    """A finished DARTS search folder: metrics.json, alphas.json, genotype.json. Each may be
    given as data (dumped as JSON) or as text/bytes (written as is)."""
    os.makedirs(folder, exist_ok=True)
    files = {"metrics.json": search_metrics() if metrics is None else metrics,
             "alphas.json": alphas_data() if alphas is None else alphas,
             "genotype.json": DARTS_V2.to_dict() if genotype is None else genotype}
    for name, content in files.items():
        path = os.path.join(folder, name)
        if isinstance(content, bytes):
            with open(path, "wb") as f:
                f.write(content)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(content if isinstance(content, str) else json.dumps(content))
    AlphaHistory.read(os.path.join(folder, "alphas.json")) if alphas is None else None
    return str(folder)


def paper_state_dict(C=4, layers=3, auxiliary=False, seed=0):
    """A state_dict in the DARTS paper code's names for NetworkCIFAR(C, 10, layers, DARTS_V2)."""
    import re

    import fastnas
    from fastnas.ops import DilConv, ReLUConvBN, SepConv

    torch.manual_seed(seed)
    model = fastnas.NetworkCIFAR(C, 10, layers, auxiliary, DARTS_V2)
    modules = dict(model.named_modules())

    def paper_key(name):
        parts = name.split(".")
        for depth in range(1, len(parts)):
            path, rest = ".".join(parts[:depth]), parts[depth:]
            module = modules.get(path)
            if isinstance(module, SepConv):
                return path + "." + ".".join([f"op.{4 * int(rest[0]) + int(rest[1])}",
                                              *rest[2:]])
            if isinstance(module, (DilConv, ReLUConvBN)):
                return path + "." + ".".join(["op", *rest])
        m = re.match(r"^auxiliary_head\.features\.(\d+)\.(.+)$", name)
        if m:
            return f"auxiliary_head.features.{int(m.group(1)) + 2}.{m.group(2)}"
        return name

    return {paper_key(k): v.clone() for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}
