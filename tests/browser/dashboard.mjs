// The dashboard in Debian's chromium (playwright-core), as an operator with a client certificate.
// Started by tests/http/dashboard_test.cpp, which sets up the fleet and passes, in the environment:
//   FLEETSIGN_URL       https://localhost:PORT
//   FLEETSIGN_P12       the operator's PKCS#12, FLEETSIGN_P12_PASSWORD its password
//   FLEETSIGN_EXPECT    JSON: what the registry holds (devices, connected, groups, lots, CAs)
//   FLEETSIGN_RESULT    where to write what was seen (JSON), FLEETSIGN_SHOTS a folder for screenshots
// NODE_EXTRA_CA_CERTS names the CA of the service's certificate. Exits 1 with the first mismatch.
import { chromium } from 'playwright-core';
import { writeFileSync } from 'node:fs';

const env = process.env;
const url = env.FLEETSIGN_URL;
const expect = JSON.parse(env.FLEETSIGN_EXPECT);
const result = { views: [], states_seen: [] };

function check(cond, what) {
  if (!cond) throw new Error(`dashboard check failed: ${what}`);
}
const cells = (row) => row.locator('td').allTextContents();

const browser = await chromium.launch({
  executablePath: env.FLEETSIGN_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
let page;
try {
  const context = await browser.newContext({
    clientCertificates: [{ origin: url, pfxPath: env.FLEETSIGN_P12, passphrase: env.FLEETSIGN_P12_PASSWORD }],
  });
  page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('response', (r) => { if (r.status() >= 400) errors.push(`${r.status()} ${r.request().method()} ${r.url()}`); });

  // The root redirects to the page; who am I comes from the certificate.
  const resp = await page.goto(`${url}/`);
  check(resp.ok(), `GET / answered ${resp.status()}`);
  check(new URL(page.url()).pathname === '/ui/', `redirected to ${page.url()}`);
  await page.waitForFunction(() => document.getElementById('whoami').textContent !== '');
  const who = await page.textContent('#whoami');
  check(who === `${expect.operator} (operator)`, `whoami shows '${who}'`);

  // Expiry horizon: Chart.js from Debian drew the chart; the table's counts are the registry's.
  await page.waitForSelector('#horizon-table tbody tr');
  check(await page.evaluate(() => typeof Chart === 'function' && Chart.version.startsWith('3.')),
    'Chart.js (Debian libjs-chart.js 3.x) is loaded');
  check(await page.evaluate(() => Chart.getChart('horizon-chart').data.datasets.length > 0), 'the chart has datasets');
  for (const g of expect.groups) {
    const row = page.locator(`#horizon-table tbody tr[data-group="${g.group}"]`);
    const c = await cells(row);
    check(Number(c[5]) === g.expiring_52w, `horizon ${g.group}: ${c[5]} expiring within 52 weeks, want ${g.expiring_52w}`);
    check(Number(c[4]) === g.expiring_4w, `horizon ${g.group}: ${c[4]} within 4 weeks, want ${g.expiring_4w}`);
    const bar = await page.evaluate(([name, week]) => {
      const d = Chart.getChart('horizon-chart').data.datasets.find((s) => s.label === name);
      return d ? d.data[week] : null;
    }, [g.group, g.week]);
    check(bar === g.in_week, `chart ${g.group}: ${bar} in week ${g.week}, want ${g.in_week}`);
  }
  const marks = await page.locator('#horizon-marks li').allTextContents();
  check(marks.some((m) => m.includes(`CRL of ${expect.crl_ca}`)), `a CRL nextUpdate is marked: ${marks.join(' | ')}`);
  await page.screenshot({ path: `${env.FLEETSIGN_SHOTS}/horizon.png`, fullPage: true });
  result.views.push('horizon');

  // Fleet now.
  await page.click('#tabs button[data-view="fleet"]');
  await page.waitForSelector('#fleet-table tbody tr');
  const total = await page.textContent('#fleet-total');
  check(total === `${expect.devices} devices, ${expect.connected} connected`, `fleet total '${total}'`);
  for (const g of expect.groups) {
    const c = await cells(page.locator(`#fleet-table tbody tr[data-group="${g.group}"]`));
    check(Number(c[4]) === g.devices && Number(c[5]) === g.connected && Number(c[6]) === g.primary_certs,
      `fleet ${g.group}: ${c.join(',')} (want ${g.devices} devices, ${g.connected} connected, ${g.primary_certs} primary)`);
  }
  result.views.push('fleet');

  // CA tree: the intermediate under its root, proof of possession shown.
  await page.click('#tabs button[data-view="cas"]');
  await page.waitForSelector(`#ca-tree li[data-ca="${expect.root}"] li[data-ca="${expect.intermediate}"]`);
  const rootText = await page.textContent(`#ca-tree li[data-ca="${expect.root}"]`);
  check(rootText.includes('proof of possession'), `root shows its proof of possession: ${rootText}`);
  // A CA whose subject is markup shows it as text.
  const hostile = await page.textContent(`#ca-tree li[data-ca="${expect.hostile_ca}"]`);
  check(hostile.includes('<img'), `the hostile subject is shown as text: ${hostile}`);
  check(await page.locator('#ca-tree img').count() === 0, 'no element made from registry text');
  check(await page.evaluate(() => window.__xss === undefined), 'no script ran from registry text');
  result.views.push('cas');

  // Revocation preview: the blast radius of a lot, nothing revoked.
  await page.click('#tabs button[data-view="revoke"]');
  await page.selectOption('#revoke-kind', 'lot');
  await page.fill('#revoke-value', expect.preview_lot);
  await page.click('[data-testid="revoke-preview"]');
  await page.waitForSelector('#revoke-result dl');
  const certs = await page.textContent('#revoke-result dd[data-key="certificates"]');
  const devices = await page.textContent('#revoke-result dd[data-key="devices"]');
  check(Number(certs) === expect.preview_certificates && Number(devices) === expect.preview_devices,
    `preview of lot ${expect.preview_lot}: ${certs} certificates, ${devices} devices`);
  const heading = await page.textContent('#revoke-result h3');
  check(heading.includes('nothing was revoked'), `preview heading '${heading}'`);
  result.preview = { certificates: Number(certs), devices: Number(devices) };
  await page.screenshot({ path: `${env.FLEETSIGN_SHOTS}/revoke.png`, fullPage: true });
  result.views.push('revoke');

  // Jobs: start a rollover through the API from the page, watch it live to the end.
  await page.click('#tabs button[data-view="jobs"]');
  await page.waitForFunction(() => document.getElementById('jobs-live').textContent === 'live');
  const started = await page.evaluate(async (lot) => {
    const r = await fetch('/api/v1/rollovers', { method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ lot, 'step-timeout': '30' }) });
    return { status: r.status, body: await r.json() };
  }, expect.rollover_lot);
  check(started.status === 201, `POST /api/v1/rollovers answered ${started.status}: ${JSON.stringify(started.body)}`);
  const job = started.body.id;
  result.job = job;
  const row = page.locator(`#jobs-table tbody tr[data-job="${job}"]`);
  const deadline = Date.now() + 150e3;
  let last = '';
  for (;;) {
    const s = (await row.count()) ? await row.getAttribute('data-state') : '';
    if (s && s !== last) { result.states_seen.push(s); last = s; }
    if (s === 'finished' || s === 'aborted' || s === 'canceled') break;
    check(Date.now() < deadline, `job ${job} did not end in 150 s (last state '${s}')`);
    await page.waitForTimeout(200);
  }
  const jc = await cells(row);
  result.job_row = jc;
  check(last === 'finished', `job ${job} ended ${last}`);
  check(jc[3].trim().endsWith(`${expect.rollover_devices}/${expect.rollover_devices}`), `job progress '${jc[3]}'`);
  check(jc[4].includes(`done ${expect.rollover_devices}`), `job tasks '${jc[4]}'`);
  check(await row.locator('button[data-action="retry-failed"]').count() === 1, 'a finished job offers retry-failed');
  await page.screenshot({ path: `${env.FLEETSIGN_SHOTS}/jobs.png`, fullPage: true });

  // Job control from the page: a rollover of the lot whose devices are offline, paused, resumed
  // and canceled with its row's buttons, each state pushed back by the stream.
  const second = await page.evaluate(async (lot) => {
    const r = await fetch('/api/v1/rollovers', { method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ lot }) });
    return { status: r.status, body: await r.json() };
  }, expect.preview_lot);
  check(second.status === 201, `second rollover: ${second.status} ${JSON.stringify(second.body)}`);
  const row2 = page.locator(`#jobs-table tbody tr[data-job="${second.body.id}"]`);
  const waitState = async (want) => {
    await page.waitForFunction(([id, st]) => {
      const r = document.querySelector(`#jobs-table tbody tr[data-job="${id}"]`);
      return r && r.dataset.state === st;
    }, [second.body.id, want], { timeout: 60e3 });
  };
  await waitState('running');
  await row2.locator('button[data-action="pause"]').click();
  await waitState('paused');
  await row2.locator('button[data-action="resume"]').click();
  await waitState('running');
  page.once('dialog', (d) => d.accept());
  await row2.locator('button[data-action="cancel"]').click();
  await waitState('canceled');
  result.controlled = second.body.id;
  result.views.push('jobs');

  // Fleet again: the rotated devices hold their new certificates in the other slot.
  await page.click('#tabs button[data-view="fleet"]');
  await page.waitForFunction((g) => {
    const r = document.querySelector(`#fleet-table tbody tr[data-group="${g}"]`);
    return r && Number(r.children[7].textContent) > 0;
  }, expect.groups[0].group);

  // Audit log: the operator's requests, filtered and paged.
  await page.click('#tabs button[data-view="audit"]');
  await page.fill('#audit-subject', expect.operator);
  await page.fill('#audit-action', 'http.');
  await page.selectOption('#audit-limit', '25');
  await page.click('#audit-form button[type="submit"]');
  await page.waitForFunction((who) => {
    const rows = Array.from(document.querySelectorAll('#audit-table tbody tr'));
    return rows.length > 0 && rows.every((r) => r.children[3].textContent.startsWith('http.') && r.children[4].textContent === who);
  }, expect.operator);
  const audit = await page.locator('#audit-table tbody tr').evaluateAll((rows) =>
    rows.map((r) => Array.from(r.children).map((c) => c.textContent)));
  check(audit.every((a) => a[3].startsWith('http.') && a[4] === expect.operator), 'audit rows match the filter');
  check(audit.some((a) => a[5].includes('/api/v1/rollovers')), 'the rollover request is in the audit log');
  // Paging: all rows, 25 at a time, newest first, ids strictly falling.
  await page.fill('#audit-subject', '');
  await page.fill('#audit-action', '');
  await page.click('#audit-form button[type="submit"]');
  await page.waitForFunction(() => Array.from(document.querySelectorAll('#audit-table tbody tr'))
    .some((r) => !r.children[3].textContent.startsWith('http.')));
  const first = Number(await page.textContent('#audit-table tbody tr:first-child td:first-child'));
  const lastId = Number(await page.textContent('#audit-table tbody tr:last-child td:first-child'));
  check(first > lastId, 'newest first');
  await page.click('#audit-older');
  await page.waitForFunction((id) => Number(document.querySelector('#audit-table tbody tr td').textContent) < id, lastId);
  result.audit_pages = [first, lastId];
  result.views.push('audit');

  check(errors.length === 0, `no script errors: ${errors.join(' | ')}`);
  writeFileSync(env.FLEETSIGN_RESULT, JSON.stringify(result));
} catch (e) {
  if (page) await page.screenshot({ path: `${env.FLEETSIGN_SHOTS}/failure.png`, fullPage: true }).catch(() => {});
  console.error(e.message || e);
  process.exitCode = 1;
} finally {
  await browser.close();
}
