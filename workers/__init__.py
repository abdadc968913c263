"""What runs inside a worker: GPU pinning, the Triton client, the S3 result store, worker signals."""
