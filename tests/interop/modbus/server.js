// A Modbus TCP server built on the npm package modbus-serial (ServerTCP), with a fixed
// register map that the plantgate interop test reads. Prints {"port": N} once listening
// on 127.0.0.1, then serves until killed.
"use strict";

const net = require("net");
const ModbusRTU = require("modbus-serial");

// Registers in the byte and word orders the test expects (see test_modbus_serial_server.py).
const holding = new Map([
    [0, 0xff85], // int16 -123
    [1, 0x4148], [2, 0x0000], // float32 12.5, ABCD
    [3, 0x3344], [4, 0x1122], // uint32 0x11223344, CDAB
    [5, 0xc093], [6, 0x4a45], [7, 0x6d5c], [8, 0xfaad], // float64 -1234.5678, ABCD
    [10, 0x5047], [11, 0x2d30], [12, 0x3100], // string "PG-01"
]);
const inputs = new Map([[0, 42]]);
const coils = new Set([3]);
const discreteInputs = new Set([5]);
const LAST_ADDRESS = 99; // addresses above this are illegal

function check(address) {
    if (address > LAST_ADDRESS) {
        throw { modbusErrorCode: 0x02, msg: `illegal data address ${address}` };
    }
}

const vector = {
    getHoldingRegister(address) { check(address); return holding.get(address) ?? 0; },
    getInputRegister(address) { check(address); return inputs.get(address) ?? 0; },
    getCoil(address) { check(address); return coils.has(address); },
    getDiscreteInput(address) { check(address); return discreteInputs.has(address); },
    setRegister() { throw { modbusErrorCode: 0x01 }; },
    setCoil() { throw { modbusErrorCode: 0x01 }; },
};

function serve(port) {
    const server = new ModbusRTU.ServerTCP(vector, { host: "127.0.0.1", port, unitID: 1 });
    server.on("initialized", () => process.stdout.write(JSON.stringify({ port }) + "\n"));
    server.on("serverError", (error) => {
        process.stderr.write(`modbus-serial server error: ${error}\n`);
        process.exit(1);
    });
}

// Usage: node server.js [PORT]. ServerTCP treats port 0 as "use 502", so without a port
// the script asks the system for a free one first.
const requested = Number(process.argv[2] || 0);
if (requested) {
    serve(requested);
} else {
    const probe = net.createServer();
    probe.listen({ port: 0, host: "127.0.0.1" }, () => {
        const port = probe.address().port;
        probe.close(() => serve(port));
    });
}
