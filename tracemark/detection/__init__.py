"""Reading the marks: the aggregated, decoy-calibrated statistics (:mod:`~tracemark.detection.stats`),
scoring images against every issued copy (:mod:`~tracemark.detection.scoring`), the verdict
(:mod:`~tracemark.detection.verdict`) and tracing leaked files (:mod:`~tracemark.detection.tracing`)."""
