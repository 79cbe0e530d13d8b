/**
 * Chromium for the dashboard's end-to-end tests: Debian's /usr/bin/chromium (installed by
 * scripts/test-deps.sh) driven by playwright-core, headless, with a fresh profile per launch
 * and nothing reaching out (no sync, no component updates, no QUIC). A missing Chromium is a
 * failure with the reason, never a skip.
 */
import { existsSync } from 'node:fs';
import { type Browser, chromium } from 'playwright-core';

export const CHROMIUM_PATH = process.env['VDISK_CHROMIUM'] ?? '/usr/bin/chromium';

export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM_PATH))
    throw new Error(
      `Chromium is missing at ${CHROMIUM_PATH}: the dashboard tests need it. Install it with scripts/test-deps.sh (apt-get install chromium), or set VDISK_CHROMIUM.`,
    );
  // launch() gives each browser a fresh temporary profile (its own --user-data-dir).
  return chromium.launch({ executablePath: CHROMIUM_PATH, args: CHROMIUM_ARGS, headless: true });
}
