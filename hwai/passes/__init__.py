"""Compression passes, one public verb each: fuse, quantize, prune, distill (model in, model out)."""
