"""tracemark: watermark image-caption datasets, detect and trace fine-tuning on them.

Small public API::

    from tracemark import Registry, protect, trace_files, audit_model
    reg = Registry.init("~/.tracemark-demo")                       # master key + registry
    protect("data/", "copy_acme/", "acme", registry=reg)           # issue a marked copy
    materialize(reg, "acme", "copy_acme/")                         # ... or re-derive it, bit for bit
    verdict = trace_files("leaked/", reg, data_dir="data/")        # whose copy leaked?
    print(verdict.sentence(), verdict.p_value)
    result = audit_model("sd15/", reg, lora="suspect.safetensors", data_dir="data/")   # a suspect model
    write_report(result, "evidence.html")

The audits (``audit_model``, ``audit_images``, ``audit_whitebox``) import torch/diffusers only
when called. Every name but ``__version__`` and ``TracemarkError`` is imported from its module when
first used (PEP 562), so ``import tracemark`` (and ``tracemark --help``) loads neither scipy nor the
modules the caller does not use. The package is grouped by stage: :mod:`tracemark.registry` (keys,
the registry), :mod:`tracemark.io` (files), :mod:`tracemark.marking` (issuing copies),
:mod:`tracemark.detection` (scoring, the verdict, tracing), :mod:`tracemark.audit` (suspect models),
:mod:`tracemark.diffusion` (the only code that touches diffusers), :mod:`tracemark.evaluation`
(attacks, a baseline, synthetic data) and :mod:`tracemark.cli`.
"""

from __future__ import annotations

from tracemark.lazy import lazy_exports

from tracemark.errors import TracemarkError
from tracemark.version import __version__

#: The public names that live in a submodule, imported when first used.
_LAZY = {
    "Key": "tracemark.registry.keys",
    "derive_key": "tracemark.registry.keys",
    "Registry": "tracemark.registry.database",
    "protect": "tracemark.marking.protect",
    "materialize": "tracemark.marking.materialize",
    "SCHEMES": "tracemark.marking.schemes",
    "get_scheme": "tracemark.marking.schemes",
    "Verdict": "tracemark.detection.verdict",
    "score_copies": "tracemark.detection.scoring",
    "trace_files": "tracemark.detection.tracing",
    "AuditResult": "tracemark.audit.result",
    "audit_model": "tracemark.audit.blackbox",
    "audit_images": "tracemark.audit.blackbox",
    "audit_whitebox": "tracemark.audit.whitebox",
    "write_report": "tracemark.audit.report",
}

__all__ = ["__version__", "TracemarkError", "Key", "derive_key", "protect", "materialize", "Registry", "SCHEMES", "get_scheme",
           "score_copies", "trace_files", "Verdict", "audit_model", "audit_images", "audit_whitebox", "AuditResult",
           "write_report"]


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
