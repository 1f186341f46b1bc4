"""mmgen: native multimodal generative models (MoT backbone, next-token text, IMM images)."""

__version__ = "0.1.0"
