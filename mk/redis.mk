# Redis for the asynchronous job store: the `redis` extra (redis-py asyncio) and
# Debian's redis-server, which the job tests start on a free loopback port of their own.

EXTRAS += redis
TEST_PREREQS += redis-server

.PHONY: redis-server
redis-server: ## Install Debian's redis-server if it is not on PATH (the job tests run a real one)
	@command -v redis-server >/dev/null 2>&1 || \
	  { apt-get update && apt-get install -y redis-server; }
	@redis-server --version
