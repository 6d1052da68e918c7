"""Model architectures, weights, labels. Modules here that build models import TensorFlow."""
