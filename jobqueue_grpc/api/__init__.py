"""Servicers: proto in, domain/store calls, proto out. Thin on purpose."""
