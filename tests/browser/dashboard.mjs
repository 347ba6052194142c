// The dashboard end to end in headless Chromium: sign in, upload examples/A and examples/B
// through the file picker, run a score job (FID, KID, style, the 4 most out-of-domain images) and
// a matrix job, and check what the pages show against the API's own answers. Screenshots go to
// $SCREENSHOTS. Run by tests/api/dashboard.rs through run.sh.
import { readdirSync, mkdirSync } from 'node:fs';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const base = process.env.GAPMETER_URL;
const key = process.env.GAPMETER_KEY;
const shots = process.env.SCREENSHOTS || join(root, 'target', 'browser-screenshots');
mkdirSync(shots, { recursive: true });
const examples = (set) => readdirSync(join(root, 'examples', set)).sort().map((f) => join(root, 'examples', set, f));

async function api(path) {
  const r = await fetch(base + path, { headers: { Authorization: `Bearer ${key}` } });
  assert.ok(r.ok, `${path}: ${r.status}`);
  return r.json();
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
const errors = [];
page.on('pageerror', (e) => errors.push(String(e)));
// The refused sign-in's 401 is logged as a failed resource load: expected, not an error.
page.on('console', (m) => { if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) errors.push(m.text()); });
page.setDefaultTimeout(120_000);
try {
  // Sign in: a wrong key is refused, the right one is kept for the tab only.
  await page.goto(base + '/');
  await page.fill('#api-key', 'gm_wrong');
  await page.click('#sign-in');
  await page.waitForSelector('[role=alert]');
  await page.fill('#api-key', key);
  await page.click('#sign-in');
  await page.waitForSelector('#new-dataset');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('gapmeter-key')), key);
  assert.equal(await page.evaluate(() => localStorage.length), 0);

  for (const set of ['A', 'B']) {
    await page.fill('#new-dataset', set);
    await page.click('#create-dataset');
    await page.waitForSelector(`#datasets tr[data-name="${set}"]`);
    assert.equal(await page.$eval('#upload-dataset', (s) => s.selectedOptions[0].textContent), set);
    const files = examples(set);
    await page.setInputFiles('#upload-files', files);
    await page.click('#upload');
    await page.waitForSelector('#upload-summary');
    assert.match(await page.textContent('#upload-summary'), new RegExp(`^${files.length} accepted`));
    assert.equal(await page.$$eval('#upload-outcomes tbody tr', (r) => r.length), files.length);
    await page.waitForSelector(`#datasets tr[data-name="${set}"] td:nth-child(4):text("${files.length}")`);
  }
  await page.screenshot({ path: join(shots, '1-datasets.png'), fullPage: true });

  // A score job from the form, followed live to its result.
  await page.click('nav a[href="#/jobs"]');
  await page.waitForSelector('#score-form');
  await page.selectOption('#score-source', { label: 'A' });
  await page.selectOption('#score-target', { label: 'B' });
  await page.selectOption('#score-extractor', 'tiny-cnn');
  await page.check('#score-style');
  await page.fill('#score-top-k', '4');
  await page.click('#start-score');
  await page.waitForSelector('#metrics');
  assert.equal(await page.textContent('#job-status'), 'succeeded');
  const jobId = page.url().split('/').pop();
  const job = await api(`/v1/jobs/${jobId}`);
  const fid = job.result.metrics.fid.value;
  const names = Object.keys(job.result.metrics);
  assert.ok(names.includes('fid') && names.includes('kid') && names.some((n) => n.startsWith('style')), names.join());
  for (const m of names) {
    assert.ok(await page.$(`#metrics tr[data-metric="${m}"]`), `row ${m}`);
  }
  const shown = Number(await page.textContent('#metrics tr[data-metric="fid"] td.num'));
  assert.ok(Math.abs(shown - fid) <= 1e-5 * Math.abs(fid), `FID shown ${shown}, API ${fid}`);
  const styleShown = Number(await page.textContent('#style-gap .big'));
  const style = job.result.metrics[names.find((n) => n.startsWith('style'))].value;
  assert.ok(Math.abs(styleShown - style) <= 1e-5 * Math.abs(style), `style shown ${styleShown}, API ${style}`);
  assert.ok(await page.textContent('#content-gap .big'));
  // The gallery: the API's four most out-of-domain images, in its order, every thumbnail loaded.
  const paths = await page.$$eval('#gallery img', (imgs) => imgs.map((i) => i.dataset.path));
  assert.deepEqual(paths, job.result.per_image.images.map((i) => i.path));
  assert.equal(paths.length, 4);
  await page.waitForFunction(() => [...document.querySelectorAll('#gallery img')].every((i) => i.complete && i.naturalWidth > 0));
  assert.ok(await page.$('#provenance'));
  await page.screenshot({ path: join(shots, '2-score.png'), fullPage: true });

  // A matrix job: the heatmap's cells carry the API's values, symmetric with a zero diagonal.
  await page.click('nav a[href="#/jobs"]');
  await page.waitForSelector('#matrix-form');
  await page.check('#matrix-form input[data-name="A"]');
  await page.check('#matrix-form input[data-name="B"]');
  await page.selectOption('#matrix-extractor', 'tiny-cnn');
  await page.click('#start-matrix');
  await page.waitForSelector('svg.heatmap[data-metric="fid"] g.cell');
  const matrixJob = await api(`/v1/jobs/${page.url().split('/').pop()}`);
  const cells = await page.$$eval('svg.heatmap[data-metric="fid"] g.cell', (gs) => gs.map((g) => ({
    i: Number(g.dataset.row), j: Number(g.dataset.col), v: Number(g.dataset.value), title: g.querySelector('title').textContent,
  })));
  assert.equal(cells.length, 4);
  for (const c of cells) {
    assert.equal(c.v, matrixJob.result.metrics.fid[c.i][c.j]);
    assert.match(c.title, /FID/);
    assert.equal(c.i === c.j, c.v === 0, JSON.stringify(c));
  }
  await page.screenshot({ path: join(shots, '3-matrix.png'), fullPage: true });

  // Signing out forgets the key.
  await page.click('#sign-out');
  await page.waitForSelector('#api-key');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('gapmeter-key')), null);
  assert.deepEqual(errors, []);
  console.log(`dashboard: ok (FID ${fid}); screenshots in ${shots}`);
} catch (e) {
  await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true }).catch(() => {});
  console.error(`page errors: ${JSON.stringify(errors)}`);
  throw e;
} finally {
  await browser.close();
}
