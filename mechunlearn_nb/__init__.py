"""mechunlearn_nb: mechanistic unlearning and editing of language models, in notebooks.

Locate the components that look a fact up (causal tracing, activation and
attribution patching, probes), change or remove the fact by training only
those weights, and test whether the change holds up. See the notebooks in
``notebooks/`` and ``python -m mechunlearn_nb --help``.
"""

from .models import components, load_model

__version__ = "0.1.0"
__all__ = ["load_model", "components", "__version__"]
