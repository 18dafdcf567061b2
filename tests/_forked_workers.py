"""Workers for test_schrodinger_limits' fork tests. Importing this module opens torch's
OpenMP team (two threads) and runs a two-thread quflow call on it, as a training process
would before it forks; spawn and forkserver children import it by name (a function defined
in ``python -c`` code cannot be pickled)."""

import numpy as np
import torch

import quflow

torch.set_num_threads(2)
torch.ones(2000, 2000).add_(1)  # a parallel torch op: torch's team exists from here
GRID = quflow.Grid(64, 2.0)
PSI = quflow.random_states(GRID, 2000, seed=0)
REF = quflow.crank_nicolson(PSI, dt=0.1, dx=GRID.dx, steps=20).numpy()  # 2.6M point-steps


def work(i: int = 0) -> bool:
    """A two-thread call in a worker; True if it gives the parent's result bitwise. Only
    tiny torch ops run here: torch's own parallel ops would hang in a forked child."""
    torch.set_num_threads(2)
    out = quflow.crank_nicolson(PSI, dt=0.1, dx=GRID.dx, steps=20)
    return bool(np.array_equal(out.numpy(), REF))


class Data(torch.utils.data.Dataset):
    """Four items, each a two-thread call."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return work(i)
