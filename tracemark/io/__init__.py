"""Files in and out: image-caption datasets in the imagefolder layout (:mod:`~tracemark.io.dataset`),
marked images written back like their sources and a perceptual hash (:mod:`~tracemark.io.imaging`),
JPEG marking in the DCT domain (:mod:`~tracemark.io.jpegdct`), writes that never leave half a file
(:mod:`~tracemark.io.safe_write`) and the one-time import of Hugging Face datasets
(:mod:`~tracemark.io.huggingface`)."""
