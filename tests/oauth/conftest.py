from tests.localpds.fixture import local_pds, probe_tls

__all__ = ["local_pds", "probe_tls"]
