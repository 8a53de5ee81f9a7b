"""The Python API shows progress as the command line does (stderr, one line per epoch when
stderr is no terminal), and is silent when asked: ``search(..., progress=False)``,
``fit(..., progress=False)``; ``progress="lines"`` is the command line's ``--quiet``."""
import re

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fastnas import DARTSOptimizer, genotypes
from fastnas.enas import ENASOptimizer
from fastnas.training import FinalTrainer


def _loaders(n=32, batch_size=8):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    half = n // 2
    return (DataLoader(TensorDataset(x[:half], y[:half]), batch_size=batch_size),
            DataLoader(TensorDataset(x[half:], y[half:]), batch_size=batch_size))


NUMBER = r"\d+\.\d{3}"
DARTS_LINE = (rf"search epoch (\d)/2  train loss {NUMBER} acc {NUMBER}  val loss {NUMBER} acc "
              rf"{NUMBER} \(train mode, epoch means\)  lr \d\.\d{{4}}  \d+\.\ds")


def _darts():
    return DARTSOptimizer(dict(channels=4, layers=3, num_nodes=2, in_channels=1, device="cpu",
                               num_steps=2))


def test_a_darts_search_shows_its_epochs_like_the_command_line(capsys):
    _darts().search(*_loaders())
    err = capsys.readouterr().err.splitlines()
    assert [re.fullmatch(DARTS_LINE, line).group(1) for line in err] == ["1", "2"], err


def test_progress_is_switched_off_or_to_lines(capsys):
    _darts().search(*_loaders(), progress=False)
    assert capsys.readouterr().err == ""
    _darts().search(*_loaders(), progress="lines")
    assert len(capsys.readouterr().err.splitlines()) == 2
    with pytest.raises(ValueError, match="progress must be True, False or 'lines', got 'bars'"):
        _darts().search(*_loaders(), progress="bars")


def test_an_enas_search_and_a_training_show_theirs(capsys):
    train, val = _loaders()
    ENASOptimizer(dict(num_steps=1, num_classes=10, in_channels=1, num_layers=3, channels=4,
                       controller_steps=2, device="cpu")).search(train, val)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("search epoch 1/1  train loss ")
    assert "(epoch mean)  val reward " in err[0]
    assert "(sampled children's accuracy; BatchNorm on batch statistics)" in err[0]
    trainer = FinalTrainer(genotypes.DARTS_V2, dict(epochs=1, channels=4, layers=3,
                                                    auxiliary=False, in_channels=1,
                                                    device="cpu"))
    trainer.fit(train, val)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("train epoch 1/1  train loss ")
    assert "(train mode, epoch mean)  test loss " in err[0]
    assert "(eval mode, running BN statistics)" in err[0]
    trainer = FinalTrainer(genotypes.DARTS_V2, dict(epochs=1, channels=4, layers=3,
                                                    auxiliary=False, in_channels=1,
                                                    device="cpu"))
    trainer.fit(train, val, progress=False)
    assert capsys.readouterr().err == ""


def test_the_user_callbacks_still_run_and_can_stop(capsys):
    records, steps = [], []
    opt = _darts()
    opt.search(*_loaders(), callback=lambda o, r: records.append(r["epoch"]) and False,
               on_step=lambda o, s: steps.append(s["train_loss"]))
    assert records == [0, 1] and len(steps) == 4
    assert len(capsys.readouterr().err.splitlines()) == 2
    opt = _darts()
    opt.search(*_loaders(), callback=lambda o, r: False)
    assert opt.epoch == 1 and len(capsys.readouterr().err.splitlines()) == 1
