"""`git expegit gui`: the web interface, a thin shell on the data layer.

    app.py         create_app(): the routes of every page module, the static files, the guard
    security.py    the guard: the access token (query, then a cookie), the Host header
                   (against DNS rebinding), the CSRF token of every state-changing request
    templating.py  render(): Jinja2 with autoescape, and what every page gets
    home.py        /            the campaign, counts per state, last sync, Synchronize
    executions.py  /executions  the table (paged on the server), one execution's report,
                                its files, reschedule and delete
    live.py        /events      server-sent events: state changes as they happen
    batches.py     /batches/new the new batch form and its preview; /tasks the queue
    analysis.py    /results, /plot, /compare
    templates/, static/         every script, style and font is served from here (no CDN)

Pages call the data layer (catalog, executions, queue, results...) and never the CLI; the web
enqueues, it never runs anything itself (the agent does).
"""
