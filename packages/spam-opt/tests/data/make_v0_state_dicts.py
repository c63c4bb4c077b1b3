"""Write v0_state_dicts.pt: optimizer checkpoints made by spam-opt before issue 16's refactor.

    python packages/spam-opt/tests/data/make_v0_state_dicts.py

Run once at commit cf6e420 (SPAM / StableSPAM as first written); test_resume.py loads the file with
the current code and checks that the resumed trajectory equals the one recorded here, bit for bit.
Each case: the optimizer's class and arguments, the parameters and `state_dict()` after STOP steps
(around a momentum reset), torch's RNG state (sparse-momentum masks), the gradients of the
remaining steps (flattened, one row per step) and the parameters they led to.
"""

import copy
from pathlib import Path

import torch

from spam_opt import SPAM, StableSPAM

STOP, STEPS = 6, 13
CASES = {
    "spam": (SPAM, dict(warmup_steps=3, reset_interval=5, clip_delay=2, threshold=3.0), None),
    "spam_sparse": (
        SPAM,
        dict(warmup_steps=3, reset_interval=5, clip_delay=2, threshold=3.0),
        0.5,
    ),
    "stable_spam": (StableSPAM, dict(total_steps=9, reset_interval=5), None),
}


def main() -> None:
    out = {}
    for name, (cls, hyper, density) in CASES.items():
        for quirks in (False, True):
            torch.manual_seed(7)
            gen = torch.Generator().manual_seed(0)
            shapes = [(6, 9), (4, 4), (11,), (3,)]
            params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
            groups = [{"params": params[:2]}, {"params": params[2:], "lr": 2e-3}]
            if density is not None:
                groups[0]["density"] = density
            kwargs = dict(lr=1e-2, weight_decay=0.05, reference_quirks=quirks, **hyper)
            opt = cls(groups, **kwargs)
            case = dict(cls=cls.__name__, kwargs=kwargs, density=density)
            grads_after_stop = []
            for step in range(STEPS):
                if step == STOP:
                    case["params"] = [p.detach().clone() for p in params]
                    case["state_dict"] = copy.deepcopy(opt.state_dict())  # not views of live state
                    case["rng"] = torch.get_rng_state()
                g_gen = torch.Generator().manual_seed(100 + step)
                grads = []
                for p in params:
                    g = torch.randn(p.shape, generator=g_gen)
                    if step in (6, 9):
                        g.view(-1)[0] *= 200.0
                    grads.append(g)
                    p.grad = g.clone()
                if step >= STOP:
                    grads_after_stop.append(torch.cat([g.view(-1) for g in grads]))
                opt.step()
            # one (STEPS - STOP, numel) tensor: the gradients of the steps after the stop, flattened
            case["grads"] = torch.stack(grads_after_stop)
            case["final"] = [p.detach().clone() for p in params]
            out[f"{name}-{'quirks' if quirks else 'paper'}"] = case
    torch.save(out, Path(__file__).with_name("v0_state_dicts.pt"))


if __name__ == "__main__":
    main()
