import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
