import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: at most this many test processes (``-n auto``): each loads the 270M model and runs notebook kernels
MAX_WORKERS = 4
#: memory one test process may need at its peak (model, a papermill kernel with its own model, Ray)
WORKER_BYTES = 5 * 2**30


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _available_bytes() -> int | None:
    """Memory available to new processes (Linux's MemAvailable, which counts the page cache as free)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one process per core, at most MAX_WORKERS and as many as free memory holds."""
    workers = min(_cores(), MAX_WORKERS)
    free = _available_bytes()
    if free is not None:
        workers = min(workers, max(1, free // WORKER_BYTES))
    return workers


# In a test process (pytest-xdist sets PYTEST_XDIST_WORKER): split the cores among the processes, so two
# processes on two cores run one thread each instead of two each fighting over both; papermill kernels and
# Ray workers started from here inherit the setting.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _threads = str(max(1, _cores() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, _threads)


#: the longest tests first, so that the processes end together instead of one waiting on a late notebook
_FIRST = ("notebook", "browser")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        for i, name in enumerate(_FIRST):
            if item.get_closest_marker(name):
                return i
        return len(_FIRST)

    items.sort(key=rank)  # stable: the order within a rank is the files' order


@pytest.fixture(scope="session")
def tiny():
    """A 2-layer randomly initialised Gemma-3 with the embedded tokenizer (no download)."""
    from mechunlearn_nb import models

    return models.tiny_model(seed=0)


@pytest.fixture(scope="session")
def gemma():
    """The real embedded Gemma 3 270M (built into the cache on first use)."""
    from mechunlearn_nb import models

    return models.load_model()
