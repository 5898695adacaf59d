"""mechunlearn_nb: mechanistic unlearning and editing of language models, in notebooks.

Locate the components that look a fact up (causal tracing, activation and
attribution patching, probes), change or remove the fact by training only
those weights, and test whether the change holds up. See the notebooks in
``notebooks/`` and ``python -m mechunlearn_nb --help``.

Layers (each imports only the layers above it in this list; data flows down):

- core: ``models`` (load), ``data`` (read), ``prompts`` (format), ``scoring``
  (answer probabilities), ``positions`` (subject span, position kinds), ``io`` (atomic writes);
- tasks: ``tasks`` (the facts a model knows; what to forget, edit and keep);
- locate: ``tracing``, ``patching``, ``probing`` → component scores → ``localization``;
- train / edit: ``editing``, ``attacks``, ``masking`` (train only a localization's weights);
- measure: ``evaluation``, ``latent`` (robustness tables);
- run: ``comparison``, ``runner``, ``report``, ``expected``, ``__main__``;
- view: ``plots`` (every figure), ``widgets`` (every explorer); no other module imports them.

Every stage returns plain tables (pandas), dataclasses or tensors that the next stage
or the view layer reads (``tests/test_layout.py`` checks the imports).
"""

from .models import components, load_model

__version__ = "0.1.0"
__all__ = ["load_model", "components", "__version__"]
