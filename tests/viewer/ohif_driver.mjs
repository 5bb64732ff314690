// Drives OHIF Viewer (served by tests/viewer/serve.py) in Debian's chromium through playwright-core,
// opens every series of one study the way a radiologist would (double-click its thumbnail), and
// writes what OHIF shows to OUT/result.json plus screenshots OUT/*.png.
//
//   node ohif_driver.mjs SPEC.json
//
// SPEC: { viewerUrl, studyUid, outDir, playwrightDir, timeoutMs,
//         segTargets: [{ sopInstanceUid, frame, points: [[col, row], ...] }] }
// segTargets: images (and points on them, in image pixels) to show with each SEG loaded; for each
// the result gives the points in screenshot pixels and the SEG's labelmap values OHIF holds there.
// No browser is downloaded; any request not to 127.0.0.1 is aborted and reported.

import { createRequire } from 'module';
import fs from 'fs';
import path from 'path';

const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const require = createRequire(path.join(spec.playwrightDir, 'package.json'));
const { chromium } = require('playwright-core');

const TIMEOUT = spec.timeoutMs ?? 60000;
const result = { studyUid: spec.studyUid, blocked: [], errors: [], displaySets: [], opened: [], screenshots: [] };
fs.mkdirSync(spec.outDir, { recursive: true });

function log(...args) {
  process.stderr.write(`[ohif ${new Date().toISOString().slice(11, 19)}] ${args.join(' ')}\n`);
}

async function shot(page, name) {
  const file = path.join(spec.outDir, `${name}.png`);
  await page.screenshot({ path: file });
  result.screenshots.push(file);
  return file;
}

// The onboarding tour ("Skip all") comes back on some route changes: dismiss it whenever shown.
async function dismissTour(page) {
  const skip = page.getByRole('button', { name: 'Skip all' });
  if (await skip.count() && await skip.first().isVisible()) {
    await skip.first().click();
    log('skipped the onboarding tour');
  }
}

async function clickIfVisible(page, locator, what, timeout) {
  try {
    await locator.first().waitFor({ state: 'visible', timeout });
  } catch {
    return false;
  }
  await locator.first().click();
  log('clicked', what);
  return true;
}

// Whether the active viewport shows an image of `sopInstanceUid`, rendered.
async function waitViewportShows(page, sopInstanceUid, timeout) {
  await page.waitForFunction((sop) => {
    const engine = window.cornerstone.getRenderingEngines()[0];
    if (!engine) return false;
    return engine.getViewports().some((vp) => {
      const id = vp.getCurrentImageId && vp.getCurrentImageId();
      return id && id.includes(`/instances/${sop}/`) && vp.getImageData && vp.getImageData();
    });
  }, sopInstanceUid, { timeout, polling: 250 });
}

async function badgeTooltip(page) {
  const badge = page.locator('[data-cy^="ModalityLoadBadge-"]');
  try {
    await badge.first().waitFor({ state: 'visible', timeout: 5000 });
    await badge.first().hover();
    const tip = page.getByRole('tooltip');
    await tip.first().waitFor({ state: 'visible', timeout: 3000 });
    const text = (await tip.first().innerText()).trim();
    await page.mouse.move(5, 500);
    return text;
  } catch {
    return null;
  }
}

// The right-hand Measurements panel (OHIF starts with it closed in this layout).
async function openMeasurementsPanel(page) {
  const panel = page.locator('[data-cy="trackedMeasurements-panel"], [data-cy="measurements-panel"]');
  if (await panel.count() && await panel.first().isVisible()) return;
  const tab = page.locator('[data-cy="trackedMeasurements-btn"], [data-cy="measurements-btn"]');
  if (await tab.count()) {
    await tab.first().click();
    await panel.first().waitFor({ state: 'visible', timeout: 10000 }).catch(() => log('Measurements panel did not open'));
  }
}

async function displaySets(page) {
  return page.evaluate(() => window.services.displaySetService.getActiveDisplaySets().map((ds) => ({
    displaySetInstanceUID: ds.displaySetInstanceUID,
    SeriesInstanceUID: ds.SeriesInstanceUID,
    Modality: ds.Modality,
    SeriesDescription: ds.SeriesDescription ?? '',
    SOPClassUID: ds.SOPClassUID ?? ds.instances?.[0]?.SOPClassUID ?? '',
    numImageFrames: ds.numImageFrames ?? 0,
    isDerived: Boolean(ds.isDerivedDisplaySet),
    sopInstanceUids: (ds.instances ?? []).map((i) => i.SOPInstanceUID),
    unsupported: Boolean(ds.unsupported),
  })));
}

async function viewportState(page) {
  return page.evaluate(() => {
    const engine = window.cornerstone.getRenderingEngines()[0];
    return (engine ? engine.getViewports() : []).map((vp) => ({
      id: vp.id,
      type: vp.type,
      imageId: vp.getCurrentImageId ? vp.getCurrentImageId() ?? null : null,
      imageIndex: vp.getCurrentImageIdIndex ? vp.getCurrentImageIdIndex() : null,
      numImages: vp.getImageIds ? vp.getImageIds().length : 0,
      canvasRect: (() => { const r = vp.canvas.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })(),
    }));
  });
}

async function measurementsState(page) {
  return page.evaluate(() => {
    const ms = window.services.measurementService.getMeasurements().map((m) => ({
      uid: m.uid,
      label: m.label ?? '',
      toolName: m.toolName ?? '',
      referenceSeriesUID: m.referenceSeriesUID ?? '',
      referencedSOPInstanceUID: m.SOPInstanceUID ?? '',
      frameNumber: m.frameNumber ?? null,
      displayText: m.displayText ?? null,
      points: m.points ?? null,
    }));
    const panel = document.querySelector('[data-cy="measurements-panel"], [data-cy="trackedMeasurements-panel"]');
    const rows = panel ? [...panel.querySelectorAll('[data-cy="data-row"]')].map((r) => r.innerText.trim()) : [];
    return { measurements: ms, panelFound: Boolean(panel), panelRows: rows, panelText: panel ? panel.innerText : null };
  });
}

async function segmentationState(page, targets) {
  return page.evaluate((targets) => {
    const cs = window.cornerstone;
    const tools = window.cornerstoneTools;
    const engine = cs.getRenderingEngines()[0];
    const segs = window.services.segmentationService.getSegmentations().map((s) => ({
      segmentationId: s.segmentationId,
      label: s.label ?? '',
      segments: Object.values(s.segments ?? {}).filter(Boolean).map((g) => ({
        segmentIndex: g.segmentIndex, label: g.label ?? '', color: g.color ?? null,
      })),
    }));
    const viewports = engine ? engine.getViewports() : [];
    const withSeg = viewports.filter((vp) => segs.some(
      (s) => tools.segmentation.state.getSegmentationRepresentations(vp.id, { segmentationId: s.segmentationId })?.length));
    return { segmentations: segs, viewportsWithOverlay: withSeg.map((vp) => vp.id) };
  }, targets);
}

// Show one target image in the viewport that holds the SEG overlay; measure there.
async function measureTarget(page, target) {
  return page.evaluate(async (t) => {
    const cs = window.cornerstone;
    const tools = window.cornerstoneTools;
    const engine = cs.getRenderingEngines()[0];
    const segIds = window.services.segmentationService.getSegmentations().map((s) => s.segmentationId);
    const needle = `/instances/${t.sopInstanceUid}/frames/${t.frame || 1}`;
    // the labelmap image OHIF derived from the displayed image (cornerstone3D keeps one per source image)
    const labelmapImageIdFor = (vp, segmentationId, imageId) => {
      const api = tools.segmentation.getCurrentLabelmapImageIdForViewport
        ?? tools.segmentation.state.getCurrentLabelmapImageIdForViewport;
      if (api) return api(vp.id, segmentationId);
      const seg = tools.segmentation.state.getSegmentation(segmentationId);
      const ids = seg?.representationData?.Labelmap?.imageIds ?? [];
      return ids.find((id) => cs.cache.getImage(id)?.referencedImageId === imageId) ?? null;
    };
    for (const vp of engine.getViewports()) {
      if (!vp.getImageIds) continue;
      const reps = segIds.filter((id) => tools.segmentation.state.getSegmentationRepresentations(vp.id, { segmentationId: id })?.length);
      const index = vp.getImageIds().findIndex((id) => id.includes(needle));
      if (index < 0 || reps.length === 0) continue;
      await vp.setImageIdIndex(index);
      vp.render();
      await new Promise((resolve) => setTimeout(resolve, 500));
      const imageId = vp.getCurrentImageId();
      const rect = vp.canvas.getBoundingClientRect();
      const canvasPoints = t.points.map(([col, row]) => {
        const world = cs.utilities.imageToWorldCoords(imageId, [col, row]);
        const [x, y] = vp.worldToCanvas(world);
        return [rect.left + x, rect.top + y];
      });
      const labelmaps = reps.map((segmentationId) => {
        const labelmapId = labelmapImageIdFor(vp, segmentationId, imageId);
        const image = labelmapId ? cs.cache.getImage(labelmapId) : null;
        if (!image) return { segmentationId, labelmapImageId: labelmapId ?? null, found: false };
        const data = image.voxelManager ? image.voxelManager.getScalarData() : image.getPixelData();
        const { rows, columns } = image;
        let count = 0, sumCol = 0, sumRow = 0;
        const nonzero = [];  // flat indices (row * columns + col) of the labelmap's pixels, for Dice in the test
        for (let i = 0; i < data.length; i++) {
          if (data[i]) {
            count++; sumCol += i % columns; sumRow += Math.floor(i / columns);
            if (nonzero.length < 500000) nonzero.push(i);
          }
        }
        return {
          segmentationId, labelmapImageId: labelmapId, found: true, rows, columns, count, nonzero,
          centroid: count ? [sumCol / count, sumRow / count] : null,
          valuesAtPoints: t.points.map(([col, row]) => data[Math.round(row) * columns + Math.round(col)] ?? null),
        };
      });
      return {
        viewportId: vp.id, imageId, imageIndex: index, canvasRect: [rect.left, rect.top, rect.width, rect.height],
        canvasPoints, labelmaps,
      };
    }
    return { error: `no viewport with a SEG overlay holds ${needle}` };
  }, target);
}

async function main() {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--enable-unsafe-swiftshader'],
    // playwright gives the browser a fresh temporary profile (--user-data-dir) of its own
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1600, height: 1000 }, deviceScaleFactor: 1 });
    await context.route('**/*', (route) => {
      const url = new URL(route.request().url());
      if (url.hostname === '127.0.0.1' || url.protocol === 'data:' || url.protocol === 'blob:') return route.continue();
      result.blocked.push(url.href);
      return route.abort();
    });
    // A fresh page of the viewer on the study, the tour skipped, the series listed.
    const openViewer = async () => {
      const page = await context.newPage();
      page.setDefaultTimeout(TIMEOUT);
      page.on('pageerror', (e) => result.errors.push(`pageerror: ${e.message}`));
      page.on('console', (m) => { if (m.type() === 'error') result.errors.push(`console: ${m.text().slice(0, 300)}`); });
      await page.goto(`${spec.viewerUrl}/viewer?StudyInstanceUIDs=${spec.studyUid}`);
      await page.waitForFunction(() => window.services && window.cornerstone
        && window.services.displaySetService.getActiveDisplaySets().length > 0, null, { timeout: TIMEOUT, polling: 250 });
      await clickIfVisible(page, page.getByRole('button', { name: 'Skip all' }), 'Skip all (onboarding tour)', 5000);
      return page;
    };

    let page = await openViewer();
    result.displaySets = await displaySets(page);
    await shot(page, 'study');

    // Images and heatmaps first, on the first page; each SEG and SR on a page of its own, so that
    // what OHIF shows for one (loaded segmentations, tracked measurements) is not another's.
    const order = { SEG: 1, SR: 2 };
    const toOpen = [...result.displaySets].sort((a, b) => (order[a.Modality] ?? 0) - (order[b.Modality] ?? 0));
    for (const [index, ds] of toOpen.entries()) {
      const name = `${String(index).padStart(2, '0')}-${ds.Modality}-${ds.SeriesDescription || ds.SeriesInstanceUID}`
        .replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 80);
      const entry = { displaySetInstanceUID: ds.displaySetInstanceUID, SeriesInstanceUID: ds.SeriesInstanceUID,
        Modality: ds.Modality, SeriesDescription: ds.SeriesDescription, name, ok: false };
      result.opened.push(entry);
      try {
        if (ds.Modality in order) {
          await page.close();
          page = await openViewer();
        }
        await dismissTour(page);
        // display set UIDs are made afresh by each page: find this series' one
        const uid = await page.evaluate((series) => window.services.displaySetService.getActiveDisplaySets()
          .find((d) => d.SeriesInstanceUID === series)?.displaySetInstanceUID, ds.SeriesInstanceUID);
        ds.displaySetInstanceUID = uid;
        entry.displaySetInstanceUID = uid;
        const thumb = page.locator(`[id="thumbnail-${uid}"]`);
        await thumb.scrollIntoViewIfNeeded();
        await thumb.dblclick();
        log('opened', name);
        if (ds.Modality === 'SEG') {
          entry.prompted = await clickIfVisible(page, page.getByRole('button', { name: 'Yes', exact: true }), 'Yes (load SEG)', 15000);
          await page.waitForFunction(() => {
            const segs = window.services.segmentationService.getSegmentations();
            const engine = window.cornerstone.getRenderingEngines()[0];
            return segs.length > 0 && engine && engine.getViewports().some((vp) => segs.some(
              (s) => window.cornerstoneTools.segmentation.state.getSegmentationRepresentations(vp.id, { segmentationId: s.segmentationId })?.length));
          }, null, { timeout: TIMEOUT, polling: 250 });
          entry.segmentation = await segmentationState(page, spec.segTargets ?? []);
          entry.targets = [];
          for (const [i, target] of (spec.segTargets ?? []).entries()) {
            const measured = await measureTarget(page, target);
            measured.screenshot = await shot(page, `${name}-target${i}`);
            entry.targets.push({ ...target, ...measured });
          }
        } else if (ds.Modality === 'SR') {
          // OHIF decides whether the SR's measurements can be loaded (isRehydratable; the viewport's
          // badge says "not compatible" when not), then asks "continue tracking measurements?".
          await page.waitForFunction((uid) => window.services.displaySetService.getDisplaySetByUID(uid)?.isLoaded,
            ds.displaySetInstanceUID, { timeout: TIMEOUT, polling: 250 });
          entry.rehydratable = await page.evaluate((uid) =>
            Boolean(window.services.displaySetService.getDisplaySetByUID(uid).isRehydratable), ds.displaySetInstanceUID);
          entry.badgeTooltip = await badgeTooltip(page);
          entry.hydrated = await clickIfVisible(page, page.getByRole('button', { name: 'Yes', exact: true }),
            'Yes (continue tracking: load the SR measurements)', entry.rehydratable ? 15000 : 3000);
          if (entry.hydrated) {
            try {
              await page.waitForFunction(() => window.services.measurementService.getMeasurements().length > 0,
                null, { timeout: 15000, polling: 250 });
            } catch { log('no measurement loaded from', name); }
          }
          await openMeasurementsPanel(page);
          Object.assign(entry, await measurementsState(page));
          entry.notCompatible = !entry.rehydratable || /not compatible/i.test(entry.badgeTooltip ?? '');
        } else {
          await waitViewportShows(page, ds.sopInstanceUids[0], TIMEOUT);
        }
        await page.waitForTimeout(500);
        entry.viewports = await viewportState(page);
        entry.screenshot = await shot(page, name);
        entry.ok = true;
      } catch (err) {
        entry.error = String(err && err.message ? err.message : err).slice(0, 2000);
        log('failed', name, entry.error.split('\n')[0]);
        try { entry.screenshot = await shot(page, `${name}-failed`); } catch { /* page gone */ }
      }
    }
  } finally {
    await browser.close();
  }
}

const started = Date.now();
try {
  await main();
} catch (err) {
  result.fatal = String(err && err.stack ? err.stack : err).slice(0, 4000);
}
result.elapsedMs = Date.now() - started;
fs.writeFileSync(path.join(spec.outDir, 'result.json'), JSON.stringify(result, null, 2));
log(`done in ${result.elapsedMs} ms${result.fatal ? ': ' + result.fatal.split('\n')[0] : ''}`);
process.exit(result.fatal ? 1 : 0);
