// A node-opcua server for plantgate's interoperability tests.
//
// Usage: node server.js PORT PKI_DIR [--secure]
// Listens on 127.0.0.1:PORT with the namespace "urn:plantgate:interop" and, under the object
// Line2, three variables that change every 200 ms and the analog item Level (EURange 0-100)
// that moves 0.5 per step. The Server object raises an event every second. With --secure,
// only the endpoints Basic256Sha256 Sign and SignAndEncrypt are offered, and client
// certificates are accepted without review (this is a test server). Prints "READY <port>"
// once listening.
"use strict";

const path = require("path");
const { OPCUAServer, OPCUACertificateManager, Variant, DataType, SecurityPolicy, MessageSecurityMode } =
    require("node-opcua");

async function main() {
    const port = parseInt(process.argv[2], 10);
    const pkiDir = process.argv[3];
    const secure = process.argv.includes("--secure");

    const serverCertificateManager = new OPCUACertificateManager({
        rootFolder: path.join(pkiDir, "server"),
        automaticallyAcceptUnknownCertificate: true,
    });
    const server = new OPCUAServer({
        port,
        host: "127.0.0.1",
        hostname: "127.0.0.1",
        resourcePath: "/interop",
        serverCertificateManager,
        securityPolicies: secure ? [SecurityPolicy.Basic256Sha256] : [SecurityPolicy.None],
        securityModes: secure
            ? [MessageSecurityMode.Sign, MessageSecurityMode.SignAndEncrypt]
            : [MessageSecurityMode.None],
        allowAnonymous: true,
        buildInfo: { productName: "plantgate interop server" },
    });
    await server.initialize();

    const namespace = server.engine.addressSpace.registerNamespace("urn:plantgate:interop");
    const line = namespace.addObject({
        organizedBy: server.engine.addressSpace.rootFolder.objects,
        browseName: "Line2",
        nodeId: "s=Line2",
    });
    const state = { temperature: 20.0, counter: 0 };
    const variable = (name, dataType, get) =>
        namespace.addVariable({
            componentOf: line,
            browseName: name,
            nodeId: `s=Line2.${name}`,
            dataType,
            minimumSamplingInterval: 100,
            value: { get: () => new Variant({ dataType: DataType[dataType], value: get() }) },
        });
    variable("Temperature", "Double", () => state.temperature);
    variable("Counter", "Int32", () => state.counter);
    variable("Label", "String", () => `batch-${Math.floor(state.counter / 10)}`);

    // An analog item with an EURange of 0-100, for percent deadbands: it moves 0.5 (0.5 %) per step.
    namespace.addAnalogDataItem({
        componentOf: line,
        browseName: "Level",
        nodeId: "s=Line2.Level",
        dataType: "Double",
        engineeringUnitsRange: { low: 0, high: 100 },
        minimumSamplingInterval: 100,
        value: { get: () => new Variant({ dataType: DataType.Double, value: (state.counter % 100) * 0.5 }) },
    });

    setInterval(() => {
        state.counter += 1;
        state.temperature = 20.0 + 5.0 * Math.sin(state.counter / 5);
    }, 200);

    // An event from the Server object every second, for event subscriptions.
    const serverObject = server.engine.addressSpace.rootFolder.objects.server;
    setInterval(() => {
        serverObject.raiseEvent("BaseEventType", {
            message: { dataType: DataType.LocalizedText, value: { text: `batch ${state.counter} done` } },
            severity: { dataType: DataType.UInt16, value: 300 },
            sourceName: { dataType: DataType.String, value: "Line2" },
        });
    }, 1000);

    await server.start();
    process.stdout.write(`READY ${server.endpoints[0].port}\n`);
    const stop = async () => {
        await server.shutdown(0);
        process.exit(0);
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
}

main().catch((error) => {
    process.stderr.write(`interop server failed: ${error.stack || error}\n`);
    process.exit(1);
});
