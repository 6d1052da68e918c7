// A gRPC client on grpc-js (Node's own HTTP/2) for the interoperability tests: it reads calls
// as JSON on stdin, makes them in turn on one channel with raw bytes (no .proto), and prints
// their outcomes as JSON.
'use strict';
const grpc = require('@grpc/grpc-js');

const same = (b) => b;

function run(client, c) {
  const md = new grpc.Metadata();
  for (const [k, v] of Object.entries(c.metadata || {})) md.add(k, v);
  const options = { deadline: Date.now() + (c.timeout_ms || 20000) };
  const messages = (c.messages || []).map((m) => Buffer.from(m, 'hex'));
  return new Promise((resolve) => {
    const answers = [];
    const done = (err) => resolve({
      code: err ? grpc.status[err.code] : 'OK',
      message: err ? err.details : '',
      answers,
    });
    if (c.kind === 'unary') {
      client.makeUnaryRequest(c.path, same, same, messages[0], md, options, (err, answer) => {
        if (!err) answers.push(answer.toString('hex'));
        done(err);
      });
      return;
    }
    const call = c.kind === 'bidi'
      ? client.makeBidiStreamRequest(c.path, same, same, md, options)
      : client.makeServerStreamRequest(c.path, same, same, messages[0], md, options);
    call.on('data', (answer) => {
      answers.push(answer.toString('hex'));
      if (c.max_answers && answers.length >= c.max_answers) call.cancel();
    });
    call.on('error', done);
    call.on('status', (s) => { if (s.code === grpc.status.OK) done(null); });
    if (c.kind === 'bidi') {
      for (const m of messages) call.write(m);
      call.end();
    }
  });
}

async function main() {
  let input = '';
  for await (const chunk of process.stdin) input += chunk;
  const calls = JSON.parse(input);
  const client = new grpc.Client(process.argv[2], grpc.credentials.createInsecure());
  const outcomes = [];
  for (const c of calls) outcomes.push(await run(client, c));
  client.close();
  process.stdout.write(JSON.stringify(outcomes) + '\n');
}

main().catch((e) => { console.error(e); process.exit(1); });
