// Starts Swagger UI on /docs (wastats.api.docs). An external script rather than FastAPI's
// inline one, so the page keeps a Content-Security-Policy that allows only 'self'.
"use strict";

(function () {
  const node = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: node.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    // FastAPI's defaults, so the page looks as FastAPI users expect.
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    // Never send the schema to validator.swagger.io: nothing leaves this server.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
})();
