"""mechunlearn_nb: mechanistic unlearning and editing of language models, in notebooks.

Locate the components that look a fact up (causal tracing, activation and
attribution patching, probes), change or remove the fact by training only
those weights, and test whether the change holds up. See the notebooks in
``notebooks/`` and ``python -m mechunlearn_nb --help``.

Layers (a module imports only modules of its own layer or the layers listed before it;
data flows down this list):

- core: ``models`` (load; the model's components), ``data`` (read), ``prompts`` (format),
  ``scoring`` (answer probabilities), ``positions`` (subject span, position kinds),
  ``checks`` (parameter types at the edges), ``io`` (the one atomic writer, ``slug``);
- tasks: ``tasks`` (the facts a model knows, one threshold; what to forget, edit and keep);
- locate: ``tracing``, ``patching``, ``probing`` → component scores → ``localization``
  (a ``Localization`` with its ``Kind``) → ``registry`` (the named localizations, built in one call);
- train: ``train`` (the one loop: fact batches, losses, accuracy, weight restore);
- use the loop: ``editing`` (deltas), ``attacks`` (relearning, soft prompt), ``masking``;
- measure: ``evaluation``, ``latent`` (robustness tables), ``statistics`` (intervals, verdicts), ``tuning`` (a
  learning rate per localization, by a declared rule);
- run: ``grid`` (cells, resume), ``cluster`` (the grid on Ray workers), ``plan`` (pre-registration), ``reanalysis``, ``sizing``
  (grid configs, their cost), ``sweep`` (every window of MLP layers edited alike), ``runner``, ``report``, ``expected``,
  ``__main__``;
- view: ``plots`` (every figure), ``widgets`` (every explorer); only ``__main__``/``report`` sit above them.

Every stage returns plain tables (pandas), dataclasses or tensors that the next stage
or the view layer reads (``tests/test_layout.py`` checks the imports).
"""

from .models import components, load_model

__version__ = "0.1.0"
__all__ = ["load_model", "components", "__version__"]
