"""The decode stage: encoded images into the model's ``uint8`` input (``decode.py``), run in the
front-end process's own threads (``decoder.py``). Pillow and NumPy only, never TensorFlow."""
