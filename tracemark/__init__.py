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
when called.
"""

from __future__ import annotations

from tracemark.version import __version__  # noqa: E402
from tracemark.errors import TracemarkError  # noqa: E402
from tracemark.keys import Key, derive_key  # noqa: E402
from tracemark.protect import protect  # noqa: E402
from tracemark.materialize import materialize  # noqa: E402
from tracemark.registry import Registry  # noqa: E402
from tracemark.schemes import SCHEMES, get_scheme  # noqa: E402
from tracemark.trace import Verdict, score_copies, trace_files  # noqa: E402
from tracemark.audit import AuditResult, audit_images, audit_model, audit_whitebox  # noqa: E402
from tracemark.report import write_report  # noqa: E402

__all__ = ["__version__", "TracemarkError", "Key", "derive_key", "protect", "materialize", "Registry", "SCHEMES", "get_scheme",
           "score_copies", "trace_files", "Verdict", "audit_model", "audit_images", "audit_whitebox", "AuditResult",
           "write_report"]
