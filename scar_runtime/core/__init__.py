"""Infrastructure every room uses: user paths, atomic writes, errors, hashing."""
