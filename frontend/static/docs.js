// Swagger UI over this store's own description (the assets come from the swagger-ui-bundle package).
"use strict";
window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
