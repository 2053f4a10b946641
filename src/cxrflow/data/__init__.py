"""Data layer: sources (Kermany, Cohen, phantom), manifest, validation, split."""
