"""sr-deploy: super-resolution generators from training to fast deployment."""

__version__ = "0.1.0"
