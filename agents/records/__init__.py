"""Wire formats of records: JSON, Open Inference Protocol V2 and Avro, in and out."""
