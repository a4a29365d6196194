"""Where chunklm reads and writes: local paths and `gs://` URLs as one path type (etils.epath), and the few things
object storage needs beyond a path (listings with checksums, conditional writes, one-line errors)."""
