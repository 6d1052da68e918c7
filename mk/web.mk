# Demo page (GET /, service/web/) and its browser test (tests/web): the `web` extra
# (Playwright's Python package) drives Debian's chromium. Playwright's own browser download
# (`playwright install`) is never used: it cannot reach its host here, and the system browser
# is what the test pins (executable_path=/usr/bin/chromium).

EXTRAS += web
TEST_PREREQS += chromium

CHROMIUM ?= /usr/bin/chromium

.PHONY: chromium
chromium: ## Install Debian's chromium if $(CHROMIUM) is missing (the demo page test drives it)
	@test -x $(CHROMIUM) || { apt-get update && apt-get install -y chromium; }
	@$(CHROMIUM) --version

.PHONY: test-web
test-web: venv chromium ## Open the demo page in headless Chromium, upload an image, screenshot it
	$(BIN)/pytest tests/web -q

.PHONY: demo-screenshot
demo-screenshot: venv chromium ## Refresh docs/img/demo.png from a real run of the demo page
	DEMO_SCREENSHOT=docs/img/demo.png $(BIN)/pytest tests/web -q
