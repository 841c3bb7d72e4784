-- Runs once, when the postgres container starts on an empty data volume (docker-entrypoint-initdb.d).
-- One database per service; every service owns its own and never reads another's.
CREATE DATABASE ingest;
CREATE DATABASE profiles;
CREATE DATABASE segments;
CREATE DATABASE loyalty;
CREATE DATABASE feedback;
