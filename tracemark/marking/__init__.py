"""Issuing marked copies: the watermark schemes (:mod:`~tracemark.marking.schemes`), which samples
are marked (:mod:`~tracemark.marking.selection`) and the trigger word (:mod:`~tracemark.marking.trigger`),
what a copy can prove (:mod:`~tracemark.marking.forecast`), the harm to the data
(:mod:`~tracemark.marking.metrics`), where the per-file jobs run (:mod:`~tracemark.marking.engine`),
and the two writers: :mod:`~tracemark.marking.protect` (issue) and
:mod:`~tracemark.marking.materialize` (re-derive)."""
