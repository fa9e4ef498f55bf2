"""Avro schemas of the message types: the catalog, dataclass bindings, compatibility."""

from service.schemas.binding import RecordCodec, bind_record
from service.schemas.catalog import SchemaCatalog, SchemaFile
from service.schemas.compat import breaking_changes

__all__ = ["RecordCodec", "SchemaCatalog", "SchemaFile", "bind_record", "breaking_changes"]
