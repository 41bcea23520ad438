from tests.assistants.test_e2e_code_interpreter import ci  # noqa: F401

async def test_debug(ci, stack, user, admin_url):
    gateway, _ = ci
    print("admin_url", admin_url)
    print("mine:", gateway.app.settings.admin_url if hasattr(gateway.app, "settings") else vars(gateway.app).keys())
    print("db:", gateway.app.gate.keys._db.pool._connect_kwargs if hasattr(gateway.app.gate.keys._db.pool, "_connect_kwargs") else gateway.app.gate.keys._db)
    async with gateway.app.gate.keys._db.pool.acquire() as conn:
        print("current db:", await conn.fetchval("select current_database()"), await conn.fetchval("select current_user"))
