"""Infrastructure every room uses: user paths (and, as the layout settles, atomic writes, errors, hashing)."""
