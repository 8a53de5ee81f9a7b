"""Plain DARTS is unchanged by the space layer (issue 17): the same losses, alphas, weights,
BatchNorm statistics and genotype after 3 first- and second-order steps, on both supernets, in
float32 and float64, as the code before it (``tests/golden/darts_steps.pt``, written by
``tests/golden/make_darts_golden.py`` from that code)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "golden"))
import make_darts_golden as golden  # noqa: E402

GOLDEN = torch.load(golden.PATH, weights_only=True)


@pytest.mark.parametrize("key,args", list(golden.cases()), ids=[k for k, _ in golden.cases()])
def test_darts_steps_match_the_pre_space_layer_code(key, args):
    expected = GOLDEN["cases"][key]
    got = golden.run(*args)
    assert got.pop("weight_names") == GOLDEN["weight_names"]
    assert got["genotype"] == expected["genotype"]
    # float32: bitwise (the same ops in the same order); float64 to rounding
    tol = dict(rtol=0, atol=0) if args[2] == "fp32" else dict(rtol=1e-12, atol=1e-14)
    for name in ("stats", "alphas_normal", "alphas_reduce", "weights"):
        torch.testing.assert_close(got[name], expected[name], **tol, msg=f"{key}: {name}")


def test_a_search_checkpoint_of_the_old_code_resumes_to_the_bit(tmp_path):
    """``tests/golden/old_darts_search.pt.gz`` was saved by the code before the space layer
    (``make_old_checkpoint.py``): loaded now, its next step is the one that code took."""
    import gzip
    import shutil

    import make_old_checkpoint as old

    from fastnas import DARTSOptimizer

    path = tmp_path / "search.pt"
    with gzip.open(os.path.join(golden.HERE, "old_darts_search.pt.gz"), "rb") as f, \
            open(path, "wb") as g:
        shutil.copyfileobj(f, g)
    opt = DARTSOptimizer.load(str(path))
    assert opt.global_step == 1 and opt.config.order == 2
    opt.step(*golden.batches(1))
    got = old.summary(opt.model.state_dict())
    expected = torch.load(os.path.join(golden.HERE, "old_darts_search_next.pt"),
                          weights_only=True)
    assert got["keys"] == expected["keys"]   # the same state_dict names, in the same order
    for name in ("alphas_normal", "alphas_reduce", "weights"):
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
