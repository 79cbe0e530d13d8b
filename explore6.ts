// Dev measurement: the list at 10,000 images (first page of 50, a page of 1000, page 2 via next).
import { join } from 'node:path';
import { launchChromium } from './src/server/test/browser.js';
import { ADMIN_PASSWORD, Api, addProjectUser, startTestServer } from './src/server/test/harness.js';
const ts = await startTestServer({ dashboardDir: join(process.cwd(), 'dist/web') });
const admin = await Api.login(ts.url, 'admin', ADMIN_PASSWORD, 'admin');
await addProjectUser(admin, 'big', 'big', 'big-pw');
const big = await Api.login(ts.url, 'big', 'big-pw', 'big');
let next = 0;
const t0 = Date.now();
await Promise.all(Array.from({ length: 8 }, async () => { while (next < 10000) { const i = next++; await big.createImage({ name: `img-${String(i).padStart(5, '0')}`, disk_format: 'qcow2', container_format: 'bare' }); } }));
console.log('created 10000 in', Date.now() - t0, 'ms');
const browser = await launchChromium();
const page = await browser.newPage({ viewport: { width: 1366, height: 820 } });
await page.goto(`${ts.url}/dashboard/`);
const tl = Date.now();
await page.getByLabel('User name').fill('big');
await page.getByLabel('Password').fill('big-pw');
await page.getByLabel('Project', { exact: true }).fill('big');
await page.getByRole('button', { name: 'Log in' }).click();
await page.locator('.images[data-state=loaded]').waitFor();
console.log('login to first page of 50:', Date.now() - tl, 'ms');
const measure = (js: string) => page.evaluate(`new Promise((resolve) => { const t0 = performance.now(); ${js}; const check = () => { const t = document.querySelector('.images'); if (t && t.getAttribute('data-state') === 'loaded' && performance.getEntriesByName('vdisk:images-rendered').at(-1).startTime > t0) requestAnimationFrame(() => resolve(Math.round(performance.now() - t0))); else requestAnimationFrame(check); }; requestAnimationFrame(check); })`);
for (let i = 0; i < 3; i++) {
  console.log('sort by name:', await measure(`location.hash = '#/images/own?sort=name:asc&r=${i}'`));
  console.log('next page:', await measure(`[...document.querySelectorAll('button')].find((b) => b.textContent.includes('Next')).click()`));
  console.log('page of 1000:', await measure(`const s = document.querySelector('#page-size'); s.value = '1000'; s.dispatchEvent(new Event('change', { bubbles: true }))`));
  console.log('next 1000:', await measure(`[...document.querySelectorAll('button')].find((b) => b.textContent.includes('Next')).click()`));
  console.log('back to 50, created desc:', await measure(`location.hash = '#/images/own?r=${i}'`));
}
const tt = Date.now();
await page.goto(`${ts.url}/dashboard/#/tree`);
await page.getByText('No master has overlays yet.').waitFor({ timeout: 120000 });
console.log('tree page over 10000 images:', Date.now() - tt, 'ms');
await browser.close();
await ts.stop();
