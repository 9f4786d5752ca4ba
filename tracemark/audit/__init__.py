"""Auditing a suspect model: the query plan (:mod:`~tracemark.audit.plan`), the black box that samples
the model (:mod:`~tracemark.audit.blackbox`), the white box that reads its denoiser
(:mod:`~tracemark.audit.whitebox`) against references (:mod:`~tracemark.audit.references`,
the owner's shadows: :mod:`~tracemark.audit.shadows`), what an audit found
(:mod:`~tracemark.audit.result`) and the HTML evidence report (:mod:`~tracemark.audit.report`)."""
